"""Synthetic tasks, toy models and small training loops for the experiment chapters.

Chapter "Comparing like with like" trains on :class:`OrderTwoLanguage`, a next-token task whose
loss floor (its entropy) is known exactly; chapter "Do resting parameters learn less?" trains on
:class:`ModularPairs`, pairs (a, b) in Z_p labelled either by a rule, (a + b) mod p, or at random.

The toy model (:class:`ToyModel`, sized by a :class:`ToyConfig`) is one residual block::

    context tokens -> embedding rows, summed -> width D -> LayerNorm -> dense FFN (width F)
                   or routed MoE (E experts of width F, top-k, optional shared expert) -> + residual
                   -> output layer (D -> classes)

The MoE layer is the library's :class:`whatruns.nn.MoELayer`: real dispatch (each expert runs on
the tokens routed to it and on no others; no capacity limit, so no token is dropped), softmax
top-k routing scaled by the router's probability (Switch), and the Switch load-balancing loss
``E * sum_e f_e * P_e``, added to the training loss with weight ``balance``.

Counting follows :mod:`whatruns.count`: 2 FLOPs per multiply-add, matmuls only (lookups, norms,
activations and softmax count 0); an embedding lookup makes one row of D active per context
token; the router and the output layer always run.

Everything is deterministic on the CPU under a fixed seed: the training functions fix the seed,
the thread count and ``torch.use_deterministic_algorithms`` while they run, and restore them after.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn

from .count import ffn_flops, ffn_params, linear_params, matmul_flops, moe_flops, router_params, shared_expert_params
from .nn import FeedForward, MoELayer
from .spec import FFN, MoE

THREADS = 1  # one thread: reproducible reductions, and no thread contention on a shared 2-core machine


# ---------------------------------------------------------------------------------------------
# the model and its counts

@dataclass(frozen=True)
class ToyConfig:
    """A toy model: ``experts == 0`` is dense (one FFN of width ``ffn_width``); otherwise a routed
    MoE of ``experts`` experts of width ``ffn_width``, each token sent to ``top_k`` of them, plus an
    always-on shared expert of width ``shared_width`` when that is non-zero."""

    vocab: int
    width: int
    ffn_width: int
    experts: int = 0
    top_k: int = 1
    shared_width: int = 0
    context: int = 2
    classes: Optional[int] = None  # output size; the vocabulary when None
    activation: str = "relu"       # of every FFN and expert: "relu" or "gelu"

    def __post_init__(self):
        if self.experts and not 1 <= self.top_k <= self.experts:
            raise ValueError(f"top_k must be in 1..{self.experts}, got {self.top_k}")
        if self.shared_width and not self.experts:
            raise ValueError("a shared expert needs routed experts beside it")

    @property
    def is_moe(self) -> bool:
        return self.experts > 0

    @property
    def outputs(self) -> int:
        return self.classes or self.vocab

    @property
    def name(self) -> str:
        if not self.is_moe:
            return f"dense F={self.ffn_width}"
        shared = f"+shared {self.shared_width}" if self.shared_width else ""
        top = f" top-{self.top_k}" if self.top_k != 1 else ""
        return f"MoE E={self.experts}x{self.ffn_width}{top}{shared}"

    # -- the formulas, by the names the chapters use ------------------------------------------
    def expert(self) -> FFN:
        return FFN(width=self.ffn_width, gated=False, bias=False, activation=self.activation)

    def moe(self) -> MoE:
        shared = FFN(self.shared_width, gated=False, bias=False, activation=self.activation) if self.shared_width else None
        return MoE(experts=self.experts, top_k=self.top_k, expert=self.expert(), shared=shared,
                   shared_experts=1 if shared else 0)

    def _block(self, experts_run: int) -> int:
        D, m = self.width, self.moe()
        return experts_run * ffn_params(D, m.expert) + router_params(D, m) + shared_expert_params(D, m)

    def block_params(self) -> int:
        """Parameters of the FFN block: the dense FFN, or every expert plus router and shared expert."""
        return self._block(self.experts) if self.is_moe else ffn_params(self.width, self.expert())

    def block_active_params(self) -> int:
        """Parameters of the block that one token uses: k experts, the router, the shared expert."""
        return self._block(self.top_k) if self.is_moe else ffn_params(self.width, self.expert())

    def params(self) -> int:
        """Every parameter stored: embeddings, norm (weight and bias), block, output layer."""
        D = self.width
        return self.context * self.vocab * D + 2 * D + self.block_params() + linear_params(D, self.outputs, bias=True)

    def active_params(self) -> int:
        """Parameters one input uses: one embedding row per context token, the rest as for the block."""
        D = self.width
        return self.context * D + 2 * D + self.block_active_params() + linear_params(D, self.outputs, bias=True)

    def flops_per_token(self) -> int:
        """Forward FLOPs per input: the block's matmuls and the output layer's (lookups count 0)."""
        D = self.width
        flops = matmul_flops(1, D, self.outputs)
        if not self.is_moe:
            return flops + ffn_flops(D, self.expert())
        return flops + moe_flops(D, self.moe())

    def counts(self) -> Dict[str, int]:
        return {"params": self.params(), "active_params": self.active_params(),
                "block_params": self.block_params(), "block_active_params": self.block_active_params(),
                "flops_per_token": self.flops_per_token()}


class ToyModel(nn.Module):
    """Embeddings -> width D -> LayerNorm -> dense FFN or routed MoE -> residual -> output layer.

    The MoE is :class:`whatruns.nn.MoELayer` (real dispatch, Switch balance loss), run with
    ``strategy`` (``"grouped_mm"``, ``"loop"``, ``"dense"`` or ``"onehot"``: the same function,
    different work). Every FFN matrix, dense or expert, starts from the same distribution
    (``nn.Linear``'s: uniform within 1/sqrt(fan-in)), so the arms differ only in routing."""

    def __init__(self, cfg: ToyConfig, strategy: str = "grouped_mm"):
        super().__init__()
        self.cfg = cfg
        D = cfg.width
        self.embed = nn.Embedding(cfg.context * cfg.vocab, D)     # one table per context position
        self.register_buffer("offset", torch.arange(cfg.context) * cfg.vocab, persistent=False)
        self.norm = nn.LayerNorm(D)
        if cfg.is_moe:
            self.block = MoELayer(D, cfg.moe(), strategy)
            with torch.no_grad():
                for w in (self.block.experts.up, self.block.experts.down):   # (E, fan_out, fan_in)
                    bound = w.shape[2] ** -0.5  # drawn in (E, fan_in, fan_out) order, as the recorded runs were
                    w.copy_(torch.empty(w.shape[0], w.shape[2], w.shape[1]).uniform_(-bound, bound).transpose(1, 2))
        else:
            self.block = FeedForward(D, cfg.expert())
        self.head = nn.Linear(D, cfg.outputs)

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        x = self.embed(ctx + self.offset).sum(1)
        return self.head(x + self.block(self.norm(x)))

    @property
    def aux(self) -> torch.Tensor:
        """The Switch balance term of the last forward pass (0 for a dense model)."""
        return self.block.aux_loss if self.cfg.is_moe else torch.zeros(())

    @torch.no_grad()
    def choice(self, ctx: torch.Tensor) -> torch.Tensor:
        """The expert each input is routed to first (an MoE's router, on the normalised input)."""
        x = self.embed(ctx + self.offset).sum(1)
        return self.block.route(self.norm(x))[0][:, 0]


# ---------------------------------------------------------------------------------------------
# determinism

@contextlib.contextmanager
def deterministic(seed: int, threads: int = THREADS):
    """Seed torch, fix the thread count and ask for deterministic kernels; restore on exit."""
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


# ---------------------------------------------------------------------------------------------
# task 1: an order-2 language with a known floor

class OrderTwoLanguage:
    """Next-token prediction from two context tokens (a, b) over a vocabulary of V.

    Each of the V*V contexts has a fixed next-token distribution: a mix, half and half, of a
    bigram table shared by every context ending in b and a table of its own. A model can learn
    the shared half cheaply and the context-specific half only with capacity, so loss falls with
    size. The entropy of the distributions is the floor no model can beat, and with the full
    table known the *expected* loss of a model is computed exactly (no sampling noise)."""

    def __init__(self, vocab: int = 64, seed: int = 0, concentration: float = 0.1, mix: float = 0.5):
        g = np.random.default_rng(seed)
        V = vocab
        bigram = g.dirichlet(np.full(V, concentration), size=V)            # P(next | b)
        own = g.dirichlet(np.full(V, concentration), size=V * V)           # P(next | a, b)
        b = np.tile(np.arange(V), V)                                       # context c = a*V + b
        p = mix * bigram[b] + (1 - mix) * own
        self.vocab = V
        self.probs = torch.tensor(p, dtype=torch.float64)
        self.contexts = torch.stack(torch.meshgrid(torch.arange(V), torch.arange(V), indexing="ij"),
                                    -1).reshape(-1, 2)
        logp = np.log(np.clip(p, 1e-300, None))
        self.floor = float(-(p * logp).sum(1).mean())          # nats per token: the entropy
        self._cdf = torch.cumsum(self.probs, 1)
        self._cdf[:, -1] = 1.0

    def sample(self, batch: int, g: torch.Generator):
        c = torch.randint(0, len(self.contexts), (batch,), generator=g)
        u = torch.rand(batch, 1, generator=g, dtype=torch.float64)
        y = torch.searchsorted(self._cdf[c], u).squeeze(1).clamp_(max=self.vocab - 1)
        return self.contexts[c], y

    @torch.no_grad()
    def loss(self, model: nn.Module) -> float:
        """Expected cross-entropy (nats) over all contexts, each weighted equally."""
        logq = torch.log_softmax(model(self.contexts).double(), -1)
        return float(-(self.probs * logq).sum(1).mean())

    def excess(self, model: nn.Module) -> float:
        """Loss above the floor: the mean KL divergence from the true distributions."""
        return self.loss(model) - self.floor


def train_language(cfg: ToyConfig, task: OrderTwoLanguage, seed: int = 0, steps: int = 1500,
                   batch: int = 512, lr: float = 3e-3, balance: float = 0.01,
                   eval_every: int = 100) -> dict:
    """Train ``cfg`` with Adam on fresh samples of ``task``; return the excess-loss curve,
    the final excess loss, wall-clock seconds, and the model's counts."""
    with deterministic(seed):
        model = ToyModel(cfg)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        g = torch.Generator().manual_seed(10_000 + seed)
        curve, seconds = [], 0.0
        for step in range(1, steps + 1):
            ctx, y = task.sample(batch, g)
            t0 = time.perf_counter()
            loss = nn.functional.cross_entropy(model(ctx), y) + balance * model.aux
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seconds += time.perf_counter() - t0
            if step % eval_every == 0 or step == steps:
                curve.append((step, task.excess(model)))
    return {"config": asdict(cfg), "name": cfg.name, "seed": seed, "steps": steps, "batch": batch,
            **cfg.counts(), "excess": curve[-1][1], "curve": curve, "seconds": seconds}


def step_seconds(cfg: ToyConfig, batch: int = 512, repeats: int = 15, seed: int = 0,
                 strategy: str = "grouped_mm") -> float:
    """Median wall-clock seconds of one Adam training step (forward, backward, update) of ``cfg``
    on a batch of random inputs, after two warm-up steps. Machine-dependent by nature."""
    with deterministic(seed):
        model = ToyModel(cfg, strategy)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        ctx = torch.randint(0, cfg.vocab, (batch, cfg.context))
        y = torch.randint(0, cfg.outputs, (batch,))
        times = []
        for i in range(repeats + 2):
            t0 = time.perf_counter()
            loss = nn.functional.cross_entropy(model(ctx), y) + 0.01 * model.aux
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i >= 2:
                times.append(time.perf_counter() - t0)
    return float(np.median(times))


def steps_to_reach(curve, target: float) -> Optional[float]:
    """First step at which a curve of (step, excess) reaches ``target``, interpolating linearly
    (in log excess) between evaluations; None if it never does."""
    prev = None
    for step, value in curve:
        if value <= target:
            if prev is None:
                return float(step)
            s0, v0 = prev
            t = (math.log(v0) - math.log(target)) / (math.log(v0) - math.log(value))
            return s0 + t * (step - s0)
        prev = (step, value)
    return None


# ---------------------------------------------------------------------------------------------
# the effective-parameter fit

def fit_power_law(n, excess):
    """Least squares in log-log: excess ~ a * n**(-alpha). Returns (a, alpha, rms residual in log)."""
    x, y = np.log(np.asarray(n, float)), np.log(np.asarray(excess, float))
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    return float(math.exp(intercept)), float(-slope), float(np.sqrt(np.mean(resid ** 2)))


def effective_params(n_active, n_total, w):
    """N_eff = N_active + w * (N_total - N_active): a resting parameter counts as w of a running one."""
    return np.asarray(n_active, float) + w * (np.asarray(n_total, float) - np.asarray(n_active, float))


def fit_resting_worth(n_active, n_total, excess, grid=None) -> dict:
    """Fit excess ~ a * N_eff**(-alpha), N_eff = N_active + w (N_total - N_active), over all models
    together (dense ones have N_total = N_active, so they pin a and alpha; the MoEs pin w).
    ``w`` is found on a grid in [0, 1] (1: resting parameters are worth running ones; 0: worthless)."""
    grid = np.linspace(0, 1, 1001) if grid is None else grid
    best = None
    for w in grid:
        a, alpha, rms = fit_power_law(effective_params(n_active, n_total, w), excess)
        if best is None or rms < best["rms"]:
            best = {"w": float(w), "a": a, "alpha": alpha, "rms": rms}
    return best


# ---------------------------------------------------------------------------------------------
# task 2: pairs in Z_p, labelled by a rule or at random

class ModularPairs:
    """All p*p pairs (a, b). ``rule='add'`` labels them (a + b) mod p and holds out a random
    ``1 - train_fraction`` of them; ``rule='random'`` gives every pair a random label and trains on
    all of them (the score is then the fraction memorized)."""

    def __init__(self, p: int = 59, rule: str = "add", train_fraction: float = 0.5, seed: int = 0):
        if rule not in ("add", "random"):
            raise ValueError(f"rule must be 'add' or 'random', got {rule!r}")
        g = torch.Generator().manual_seed(seed)
        self.p, self.rule = p, rule
        self.x = torch.stack(torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij"), -1).reshape(-1, 2)
        if rule == "add":
            self.y = (self.x[:, 0] + self.x[:, 1]) % p
            perm = torch.randperm(p * p, generator=g)
            n = round(train_fraction * p * p)
            self.train, self.test = perm[:n].sort().values, perm[n:].sort().values
        else:
            self.y = torch.randint(0, p, (p * p,), generator=g)
            self.train, self.test = torch.arange(p * p), torch.arange(0)

    def fingerprint(self) -> str:
        """A short hash of the task itself (the pairs, their labels and the split into training and held-out
        pairs): integers only, so the same on every machine. ``scripts/experiments.py`` stores it beside the
        sweep, and ``tests/test_data.py`` checks that the current definition still gives it."""
        h = hashlib.sha256()
        for t in (self.x, self.y, self.train, self.test):
            h.update(t.to(torch.int64).numpy().astype("<i8").tobytes())   # little-endian on any machine
        return h.hexdigest()[:16]

    @torch.no_grad()
    def accuracy(self, model: nn.Module, idx: torch.Tensor) -> float:
        if len(idx) == 0:
            return None
        return float((model(self.x[idx]).argmax(-1) == self.y[idx]).double().mean())


def train_pairs(cfg: ToyConfig, task: ModularPairs, seed: int = 0, steps: int = 2000, lr: float = 3e-3,
                weight_decay: float = 1.0, balance: float = 0.01, eval_every: int = 100) -> dict:
    """Full-batch AdamW on the task's training pairs. Returns train and held-out accuracy (curves
    and final), and how the training pairs were split among the experts at the end."""
    with deterministic(seed):
        model = ToyModel(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
        x, y = task.x[task.train], task.y[task.train]
        curve, t0 = [], time.perf_counter()
        for step in range(1, steps + 1):
            loss = nn.functional.cross_entropy(model(x), y) + balance * model.aux
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % eval_every == 0 or step == steps:
                curve.append((step, task.accuracy(model, task.train), task.accuracy(model, task.test)))
        seconds = time.perf_counter() - t0
        out = {"config": asdict(cfg), "name": cfg.name, "seed": seed, "rule": task.rule, "steps": steps,
               "train_fraction": len(task.train) / task.p ** 2, **cfg.counts(),
               "train_acc": curve[-1][1], "test_acc": curve[-1][2], "curve": curve, "seconds": seconds}
        if cfg.is_moe:
            with torch.no_grad():
                model(x)
                out["train_load"] = model.block.load.tolist()            # training pairs per expert
                if len(task.test):
                    model(task.x[task.test])
                    out["test_load"] = model.block.load.tolist()
            out["expert_test_acc"] = expert_accuracy(model, task)
    return out


@torch.no_grad()
def expert_accuracy(model: ToyModel, task: ModularPairs) -> List[Optional[float]]:
    """Held-out accuracy of an MoE on the pairs its router sends to each expert (top-1 choice)."""
    if not len(task.test):
        return []
    pred = model(task.x[task.test]).argmax(-1)
    choice = model.choice(task.x[task.test])
    right = (pred == task.y[task.test])
    return [float(right[choice == e].double().mean()) if (choice == e).any() else None
            for e in range(model.cfg.experts)]
