"""Experiment D: a hashed embedding table that grows a thousandfold while the work per example stays put.

Chapter "Embeddings: billions of parameters, a handful of rows" (``book/04_embeddings``) runs this
module. The task, :class:`ClickTask`, is a toy click prediction: an example is ``per_example`` item
IDs drawn from ``ids`` IDs with Zipf popularity (ID i, counted from 0, has probability proportional
to ``(i + 1) ** -exponent``), and its label is a coin flip with probability
``sigmoid(sum of the examples' hidden per-ID weights)``. Knowing those probabilities, the loss a
model *expects* on a fixed set of examples is computed exactly (no label noise): the floor is their
binary entropy, and a model's excess loss is the mean KL divergence from them.

The model, :class:`HashedBagModel`, is what recommendation systems do at scale, shrunk: each ID is
hashed to one of ``rows`` rows of a ``rows x dim`` table (an ``EmbeddingBag`` that sums the
example's rows: a lookup, counted as 0 FLOPs), and a small MLP (``dim -> hidden -> 1``) turns the
sum into a logit. Its parameters grow with ``rows``; its FLOPs per example,
:func:`flops_per_example`, do not. Training uses sparse gradients and ``torch.optim.SparseAdam`` on
the table (Adam on the MLP): a step updates the rows the batch read and no others.

Everything is deterministic on the CPU under a fixed seed (one thread, deterministic kernels; see
:func:`whatruns.tasks.deterministic`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Iterable, List, Optional

import torch
from torch import nn

from .count import linear_params, matmul_flops
from .tasks import deterministic

PRIME = 2 ** 31 - 1  # the hash works modulo this Mersenne prime
EVAL_SEED = 1_000_003  # the fixed examples every model is evaluated on


# ---------------------------------------------------------------------------------------------
# the task

class ClickTask:
    """Click prediction from ``per_example`` item IDs with Zipf(``exponent``) popularity.

    ``popularity[i]`` is the probability of drawing ID i; ``weight[i]`` its hidden effect on the
    logit (normal, standard deviation ``scale``). Both depend on ``seed`` only.
    """

    def __init__(self, ids: int = 200_000, per_example: int = 8, exponent: float = 1.1,
                 scale: float = 0.5, seed: int = 0):
        self.ids, self.per_example, self.exponent, self.scale, self.seed = ids, per_example, exponent, scale, seed
        g = torch.Generator().manual_seed(seed)
        p = torch.arange(1, ids + 1, dtype=torch.float64) ** -exponent
        self.popularity = p / p.sum()
        self._cdf = torch.cumsum(self.popularity, 0)
        self._cdf[-1] = 1.0
        self.weight = torch.randn(ids, generator=g, dtype=torch.float64) * scale

    def sample(self, n: int, g: torch.Generator):
        """``n`` examples: IDs (n, per_example), labels (n,) in {0, 1}, and the true click
        probabilities (n,) the labels were drawn from."""
        u = torch.rand(n * self.per_example, generator=g, dtype=torch.float64)
        ids = torch.searchsorted(self._cdf, u).clamp_(max=self.ids - 1).view(n, self.per_example)
        p = torch.sigmoid(self.weight[ids].sum(1))
        labels = torch.bernoulli(p, generator=g).float()
        return ids, labels, p

    def eval_set(self, n: int = 8192):
        """The fixed examples every model is evaluated on (the same for every seed)."""
        return self.sample(n, torch.Generator().manual_seed(EVAL_SEED))


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """H(p) in nats, elementwise: the loss a model that knows p expects."""
    p = p.double()
    return -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p))


def expected_loss(logits: torch.Tensor, p: torch.Tensor) -> float:
    """The cross-entropy (nats) a model with these logits expects when labels are Bernoulli(p):
    ``-(p log q + (1 - p) log(1 - q))`` averaged, with q = sigmoid(logits). No label noise."""
    z, p = logits.double(), p.double()
    return float(-(p * nn.functional.logsigmoid(z) + (1 - p) * nn.functional.logsigmoid(-z)).mean())


def constant_loss(p: torch.Tensor) -> float:
    """The expected loss of the best constant prediction (the mean click rate): what a model that
    learned nothing about the IDs gets."""
    return float(binary_entropy(p.double().mean()))


# ---------------------------------------------------------------------------------------------
# hashing and counting

def hash_rows(ids: torch.Tensor, rows: int, seed: int = 0) -> torch.Tensor:
    """The row of each ID in a table of ``rows`` rows. Two rounds of ``x -> (a * x + c) mod PRIME``
    with an xor-shift after each, then ``mod rows``; a and c drawn from ``seed``. Different IDs may
    share a row (a collision), about as often as with a random function.

    One linear round alone is not enough: on a contiguous range of IDs it collides far less than
    chance (200,000 IDs in 2^20 rows: no collision at all, against about 18,000 expected), which
    would flatter large tables."""
    g = torch.Generator().manual_seed(seed)
    a1, c1, a2, c2 = (int(torch.randint(1, PRIME, (1,), generator=g)) for _ in range(4))
    x = (ids * a1 + c1) % PRIME  # every value stays below 2**62: no overflow
    x = x ^ (x >> 13)
    x = (x * a2 + c2) % PRIME
    x = x ^ (x >> 16)
    return x % rows


def expected_distinct(popularity: torch.Tensor, draws: int) -> float:
    """Expected number of distinct IDs among ``draws`` independent draws from ``popularity``:
    ``sum_i 1 - (1 - p_i) ** draws``. For a batch this is the rows (before hashing) it reads."""
    p = popularity.double()
    return float((-torch.expm1(draws * torch.log1p(-p))).sum())


def shadowed_traffic(task: "ClickTask", rows: int, hash_seed: int = 0) -> float:
    """The fraction of lookups that land in a row where a more popular ID also lives: traffic the
    row cannot serve for its own ID alone. It falls as the table grows, fast at first (the popular
    IDs get rows of their own) and then slowly (only rare IDs still collide)."""
    r = hash_rows(torch.arange(task.ids), rows, hash_seed)
    owner = torch.zeros(rows, dtype=torch.float64).scatter_reduce(0, r, task.popularity, "amax")
    return float(1 - owner.sum())


def model_params(rows: int, dim: int = 16, hidden: int = 32) -> int:
    """Parameters of :class:`HashedBagModel`: the ``rows x dim`` table, and the MLP's two Linear
    layers with biases."""
    return rows * dim + linear_params(dim, hidden, bias=True) + linear_params(hidden, 1, bias=True)


def flops_per_example(dim: int = 16, hidden: int = 32) -> int:
    """Forward FLOPs per example of :class:`HashedBagModel` as torch counts them: the MLP's two
    matmuls. The lookup and the sum of the rows count 0; nothing depends on the table's rows."""
    return matmul_flops(1, dim, hidden) + matmul_flops(1, hidden, 1)


# ---------------------------------------------------------------------------------------------
# the model

class HashedBagModel(nn.Module):
    """IDs (n, per_example) -> logits (n,): hash each ID to a row, sum the rows (``EmbeddingBag``),
    then ``Linear(dim, hidden) -> ReLU -> Linear(hidden, 1)``.

    ``sparse=True`` gives the table sparse gradients (only the rows read appear in them); the table
    starts normal with standard deviation ``init_std``.
    """

    def __init__(self, rows: int, dim: int = 16, hidden: int = 32, sparse: bool = True,
                 hash_seed: int = 0, init_std: float = 0.01):
        super().__init__()
        self.rows, self.hash_seed = rows, hash_seed
        weight = torch.empty(rows, dim)  # initialised once (nn.EmbeddingBag would draw N(0, 1) first)
        weight.normal_(std=init_std) if init_std else weight.zero_()
        self.table = nn.EmbeddingBag(rows, dim, mode="sum", sparse=sparse, _weight=weight)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def rows_of(self, ids: torch.Tensor) -> torch.Tensor:
        """The table row each ID hashes to (:func:`hash_rows` with this model's rows and seed)."""
        return hash_rows(ids, self.rows, self.hash_seed)

    def forward(self, ids: torch.Tensor, hashed: bool = False) -> torch.Tensor:
        """Logits for ``ids``; with ``hashed=True``, ``ids`` are already rows (see :meth:`rows_of`)."""
        return self.mlp(self.table(ids if hashed else self.rows_of(ids))).squeeze(-1)


def optimizers(model: HashedBagModel, lr_table: float, lr_mlp: float):
    """SparseAdam on the table when its gradients are sparse, else Adam; Adam on the MLP. The dense
    Adams are torch's fused kernel (one pass over each tensor), the fastest dense update it has."""
    table = list(model.table.parameters())
    opt = torch.optim.SparseAdam(table, lr=lr_table) if model.table.sparse \
        else torch.optim.Adam(table, lr=lr_table, fused=True)
    return opt, torch.optim.Adam(model.mlp.parameters(), lr=lr_mlp, fused=True)


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of an optimizer's state tensors (Adam's and SparseAdam's: two per parameter, both dense)."""
    return sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
               if torch.is_tensor(v) and v.dim() > 0)


# ---------------------------------------------------------------------------------------------
# the experiment

@dataclass(frozen=True)
class Run:
    """One trained model: its table ``rows`` and ``seed``; ``params`` and ``flops_per_example``;
    expected ``loss`` on the evaluation set, the ``floor`` (entropy) and the ``constant`` predictor's
    loss (so ``excess = loss - floor``); the mean distinct rows one batch read (``rows_per_batch``),
    the distinct rows the whole run read (``rows_ever``); CPU ``seconds`` spent."""

    rows: int
    seed: int
    steps: int
    batch: int
    params: int
    flops_per_example: int
    loss: float
    floor: float
    constant: float
    rows_per_batch: float
    rows_ever: int
    seconds: float

    @property
    def excess(self) -> float:
        return self.loss - self.floor

    @property
    def gap_closed(self) -> float:
        """The fraction of the constant predictor's excess loss the model removed."""
        return (self.constant - self.loss) / (self.constant - self.floor)

    def as_dict(self) -> dict:
        return asdict(self) | {"excess": self.excess, "gap_closed": self.gap_closed}


def rows_read(rows: torch.Tensor, batches: int = 8):
    """Rows read by batches of hashed IDs (steps, batch, per_example): the mean number of distinct
    rows one batch reads (the rows its sparse gradient holds), over the first ``batches`` batches,
    and the distinct rows all the batches read."""
    flat = rows.reshape(rows.shape[0], -1)
    first = flat[:batches].sort(dim=1).values
    per_batch = 1 + (first[:, 1:] != first[:, :-1]).sum(1)
    return float(per_batch.double().mean()), int((torch.bincount(flat.reshape(-1)) > 0).sum())


def training_data(task: ClickTask, steps: int, batch: int, seed: int):
    """The examples of one run, drawn at once: IDs (steps, batch, per_example), labels (steps, batch).
    The same for every table size, so that runs of one seed differ only in the table."""
    ids, labels, _ = task.sample(steps * batch, torch.Generator().manual_seed(seed))
    return ids.view(steps, batch, -1), labels.view(steps, batch)


def train_click(rows: int, task: Optional[ClickTask] = None, seed: int = 0, steps: int = 60,
                batch: int = 1024, lr_table: float = 0.2, lr_mlp: float = 1e-2, dim: int = 16,
                hidden: int = 32, data=None, eval_set=None) -> Run:
    """Train a :class:`HashedBagModel` of ``rows`` rows for ``steps`` steps of ``batch`` fresh
    examples (SparseAdam on the table, Adam on the MLP; binary cross-entropy) and evaluate it.

    ``data`` (from :func:`training_data`) and ``eval_set`` (from :meth:`ClickTask.eval_set`) may be
    passed in to share them between runs; they are drawn from ``task`` and ``seed`` otherwise.
    """
    task = task or ClickTask()
    ids, labels = data if data is not None else training_data(task, steps, batch, seed)
    eval_ids, _, eval_p = eval_set if eval_set is not None else task.eval_set()
    start = time.process_time()
    with deterministic(seed):
        model = HashedBagModel(rows, dim, hidden, sparse=True)
        opt_table, opt_mlp = optimizers(model, lr_table, lr_mlp)
        hashed = model.rows_of(ids)
        for step in range(steps):
            loss = nn.functional.binary_cross_entropy_with_logits(model(hashed[step], hashed=True), labels[step])
            model.zero_grad(set_to_none=True)
            loss.backward()
            opt_table.step()
            opt_mlp.step()
        with torch.no_grad():
            logits = model(eval_ids)
    per_batch, ever = rows_read(hashed)
    return Run(rows=rows, seed=seed, steps=steps, batch=batch, params=model_params(rows, dim, hidden),
               flops_per_example=flops_per_example(dim, hidden), loss=expected_loss(logits, eval_p),
               floor=float(binary_entropy(eval_p).mean()), constant=constant_loss(eval_p),
               rows_per_batch=per_batch, rows_ever=ever,
               seconds=time.process_time() - start)


def sweep(sizes: Iterable[int], seeds: Iterable[int] = (0, 1, 2), task: Optional[ClickTask] = None,
          steps: int = 60, batch: int = 1024, **kwargs) -> List[Run]:
    """:func:`train_click` for every table size and seed; each seed's examples are shared by its sizes."""
    task = task or ClickTask()
    ev = task.eval_set()
    runs = []
    for seed in seeds:
        data = training_data(task, steps, batch, seed)
        for rows in sizes:
            runs.append(train_click(rows, task, seed, steps, batch, data=data, eval_set=ev, **kwargs))
    return runs


def optimizer_step_seconds(rows: int, sparse: bool, batch: int = 1024, dim: int = 16,
                           repeats: int = 5, task: Optional[ClickTask] = None) -> float:
    """Seconds (median of ``repeats``, after one warm-up) of one optimizer step on the table alone,
    for the gradient of one batch: SparseAdam on a sparse gradient, or Adam on the dense one.
    Machine-dependent: compare sizes within one run, not across machines."""
    from .measure import median_time
    task = task or ClickTask()
    ids, labels, _ = task.sample(batch, torch.Generator().manual_seed(0))
    with deterministic(0):
        model = HashedBagModel(rows, dim, sparse=sparse)
        opt, _ = optimizers(model, 1e-3, 1e-3)
        nn.functional.binary_cross_entropy_with_logits(model(ids), labels).backward()
        return median_time(opt.step, repeats=repeats, warmup=1)


__all__ = ["ClickTask", "HashedBagModel", "Run", "binary_entropy", "constant_loss", "expected_distinct",
           "expected_loss", "flops_per_example", "hash_rows", "model_params", "optimizer_step_seconds",
           "optimizers", "rows_read", "shadowed_traffic", "state_bytes", "sweep", "train_click", "training_data"]
