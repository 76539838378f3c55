"""Runnable torch modules built from a spec, doing exactly the matmuls :func:`whatruns.count` counts.

``build(spec)`` returns a module whose parameter count is ``count(spec).total_params`` and whose
forward pass on B sequences of T tokens does ``count(spec, T).flops_per_token * B * T`` FLOPs as
:mod:`whatruns.measure` counts them. Chapters: "Dense: every parameter works" (the transformer),
"Mixture of experts: most parameters rest" (:class:`MoELayer`), "Embeddings: billions of
parameters, a handful of rows" (:class:`DLRM`).

Choices the spec leaves open: pre-norm residual blocks; a causal decoder; rotary embeddings
(half-split, base 10,000) when the model has neither a position table nor relative buckets;
GPT-style initialisation (normal, std 0.02; biases 0).
"""

from __future__ import annotations

import math
import threading
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from .spec import FFN, Attention, EmbeddingModel, MoE, Norm, SpecError, Transformer

STRATEGIES = ("grouped_mm", "loop", "dense", "onehot")
"""How a MoE layer computes its experts (see :class:`MoELayer`); the first is the default."""
SPEED_STRATEGIES = ("threads", "gather")
"""More strategies :func:`build` accepts, compared for speed in chapter "What FLOPs don't count": the loop
with experts dealt out to threads (the loop's FLOPs) and a padded batch (more). Kept out of
:data:`STRATEGIES`, which chapter "Mixture of experts" tabulates one by one."""


def build(spec, *, seed: int = 0, moe_strategy: str = STRATEGIES[0], capacity_factor: float = None,
          sparse: bool = False, dtype=torch.float32) -> nn.Module:
    """A torch module for ``spec``: a :class:`TransformerLM` or a :class:`DLRM`.

    ``moe_strategy`` is one of :data:`STRATEGIES` or :data:`SPEED_STRATEGIES` (on CPU, for inference,
    ``"threads"`` is the fastest); ``capacity_factor`` overrides the spec's
    (None: the spec's, which is None for dropless); ``sparse`` gives a DLRM's tables sparse
    gradients. The weights depend on ``seed`` only (the global RNG is left as it was).
    """
    if moe_strategy not in STRATEGIES + SPEED_STRATEGIES:
        raise SpecError(f"moe_strategy must be one of {', '.join(STRATEGIES + SPEED_STRATEGIES)}, "
                        f"got {moe_strategy!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(spec, Transformer):
            model = TransformerLM(spec, moe_strategy, capacity_factor)
        elif isinstance(spec, EmbeddingModel):
            model = DLRM(spec, sparse)
        else:
            raise SpecError(f"cannot build a {type(spec).__name__}; expected a Transformer or an EmbeddingModel")
    return model.to(dtype)


# ---------------------------------------------------------------------------------------------
# pieces

def make_norm(norm: Norm, width: int) -> nn.Module:
    if norm.kind == "layernorm":
        return nn.LayerNorm(width, bias=norm.bias)
    return nn.RMSNorm(width, eps=1e-6)


def activate(name: str, gate: torch.Tensor, up: torch.Tensor = None) -> torch.Tensor:
    """The FFN's nonlinearity: ``act(gate) * up`` for a gated FFN, ``act(gate)`` for a plain one."""
    if name == "swiglu_oai":  # gpt-oss: clamped, x * sigmoid(1.702 x), and (up + 1)
        gate = gate.clamp(max=7.0)
        h = gate * torch.sigmoid(1.702 * gate)
        return h if up is None else h * (up.clamp(-7.0, 7.0) + 1)
    h = {"silu": F.silu, "relu": F.relu, "gelu": F.gelu,
         "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}[name](gate)
    return h if up is None else h * up


class FeedForward(nn.Module):
    """One FFN of width F: ``down(act(gate(x)) * up(x))``, or ``down(act(up(x)))`` when plain."""

    def __init__(self, D: int, f: FFN):
        super().__init__()
        self.act = f.activation
        self.gate = nn.Linear(D, f.width, bias=f.bias) if f.gated else None
        self.up = nn.Linear(D, f.width, bias=f.bias)
        self.down = nn.Linear(f.width, D, bias=f.bias)

    def forward(self, x):
        h = activate(self.act, self.gate(x), self.up(x)) if self.gate is not None else activate(self.act, self.up(x))
        return self.down(h)


def rotate(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding over the last dim of ``x`` (..., T, d); elementwise, 0 FLOPs counted."""
    T, half = x.shape[-2], x.shape[-1] // 2
    if half == 0:
        return x
    freq = base ** (-torch.arange(half, dtype=torch.float32) / half)
    angle = torch.arange(T, dtype=torch.float32)[:, None] * freq  # broadcast, not a matmul
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], dim=-1)


def relative_buckets(T: int, S: int, buckets: int, bidirectional: bool, max_distance: int = 128):
    """T5's bucket of each (query, key) offset: exact for small offsets, logarithmic beyond."""
    rel = torch.arange(S)[None, :] - torch.arange(T)[:, None]
    n, out = buckets, torch.zeros_like(rel)
    if bidirectional:
        n = max(buckets // 2, 1)
        out = (rel > 0).long() * n
        rel = rel.abs()
    else:
        rel = (-rel).clamp(min=0)
    exact = max(n // 2, 1)
    far = exact + (torch.log(rel.float().clamp(min=1) / exact) / math.log(max(max_distance / exact, 2))
                   * (n - exact)).long()
    return (out + torch.where(rel < exact, rel, far.clamp(max=n - 1))).clamp(0, buckets - 1)


# ---------------------------------------------------------------------------------------------
# attention

class SelfAttention(nn.Module):
    """MHA / GQA / MQA, or MLA (DeepSeek-V2/V3, computed the naive way: keys and values are
    expanded from the latent); cross-attention when called with ``source``."""

    def __init__(self, D: int, a: Attention, rotary: bool):
        super().__init__()
        self.a, self.rotary = a, rotary
        H, K, dh, dv = a.heads, a.kv_heads, a.head_dim, a.v_head_dim
        if a.mla:
            if a.q_lora_rank:
                self.q_a = nn.Linear(D, a.q_lora_rank, bias=a.bias)
                self.q_norm = nn.RMSNorm(a.q_lora_rank, eps=1e-6)
                self.q_b = nn.Linear(a.q_lora_rank, H * dh, bias=False)
            else:
                self.q = nn.Linear(D, H * dh, bias=False)
            self.kv_a = nn.Linear(D, a.kv_lora_rank + a.rope_head_dim, bias=a.bias)  # latent + rope key
            self.kv_norm = nn.RMSNorm(a.kv_lora_rank, eps=1e-6)
            self.kv_b = nn.Linear(a.kv_lora_rank, H * (dh - a.rope_head_dim + dv), bias=False)
        else:
            self.q = nn.Linear(D, H * dh, bias=a.bias)
            self.k = nn.Linear(D, K * dh, bias=a.bias)
            self.v = nn.Linear(D, K * dv, bias=a.bias)
        self.o = nn.Linear(H * dv, D, bias=a.out_bias)
        self.q_head_norm = nn.RMSNorm(dh, eps=1e-6) if a.qk_norm else None
        self.k_head_norm = nn.RMSNorm(dh, eps=1e-6) if a.qk_norm else None
        self.sinks = nn.Parameter(torch.zeros(H)) if a.sinks else None

    def heads(self, x, n, d):  # (B, T, n*d) -> (B, n, T, d)
        return x.view(x.shape[0], x.shape[1], n, d).transpose(1, 2)

    def forward(self, x, source=None, mask=None, causal=False):
        a = self.a
        H, K, dh, dv = a.heads, a.kv_heads, a.head_dim, a.v_head_dim
        rotary = self.rotary and source is None  # no positions across the encoder/decoder gap
        source = x if source is None else source
        if a.mla:
            r, nope = a.rope_head_dim, a.head_dim - a.rope_head_dim
            q = self.q_b(self.q_norm(self.q_a(x))) if a.q_lora_rank else self.q(x)
            q_nope, q_rope = self.heads(q, H, dh).split([nope, r], dim=-1)
            latent, k_rope = self.kv_a(source).split([a.kv_lora_rank, r], dim=-1)
            k_nope, v = self.heads(self.kv_b(self.kv_norm(latent)), H, nope + dv).split([nope, dv], dim=-1)
            k_rope = k_rope.unsqueeze(1)  # one rope key shared by all heads
            if rotary:
                q_rope, k_rope = rotate(q_rope), rotate(k_rope)
            q = torch.cat([q_nope, q_rope], dim=-1)
            k = torch.cat([k_nope, k_rope.expand(-1, H, -1, -1)], dim=-1)
        else:
            q, k, v = self.heads(self.q(x), H, dh), self.heads(self.k(source), K, dh), self.heads(self.v(source), K, dv)
        if self.q_head_norm is not None:
            q, k = self.q_head_norm(q), self.k_head_norm(k)
        if rotary and not a.mla:
            q, k = rotate(q), rotate(k)
        if self.sinks is not None:
            out = attend_with_sinks(q, k, v, self.sinks, mask, causal)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                                 enable_gqa=K < H)
        return self.o(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], H * dv))


def attend_with_sinks(q, k, v, sinks, mask, causal):
    """Attention with a learned sink logit per head (gpt-oss): the sink joins the softmax and
    takes some weight, then is dropped. Two matmuls per head, as SDPA's."""
    if k.shape[1] < q.shape[1]:
        k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores + mask
    elif causal:
        scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
    sink = sinks.view(1, -1, 1, 1).expand(scores.shape[0], -1, scores.shape[2], 1)
    p = torch.cat([scores, sink], dim=-1).softmax(dim=-1)[..., :-1]
    return p @ v


# ---------------------------------------------------------------------------------------------
# mixture of experts

class Experts(nn.Module):
    """E expert FFNs, their weights stored as 3-D parameters in ``nn.Linear``'s orientation (and
    Hugging Face's): ``up[e]`` is expert e's (F, D) matrix, applied as ``F.linear(x, up[e])``."""

    def __init__(self, E: int, D: int, f: FFN):
        super().__init__()
        self.act, F_ = f.activation, f.width

        def weight(n_in, n_out):
            # drawn in (E, in, out) order, the layout the book's recorded runs were made with, so
            # that a seed gives the same experts; stored (E, out, in), which runs faster (chapter 7)
            return nn.Parameter((torch.randn(E, n_in, n_out) * 0.02).transpose(1, 2).contiguous())

        self.gate = weight(D, F_) if f.gated else None
        self.up, self.down = weight(D, F_), weight(F_, D)
        self.gate_bias = nn.Parameter(torch.zeros(E, F_)) if f.gated and f.bias else None
        self.up_bias = nn.Parameter(torch.zeros(E, F_)) if f.bias else None
        self.down_bias = nn.Parameter(torch.zeros(E, D)) if f.bias else None

    def run(self, x, matmul, pick):
        """The experts on rows ``x``: ``matmul(x, W)`` multiplies by the (E, out, in) weight
        ``W`` the strategy's way, ``pick(b)`` gives each row its expert's bias."""

        def linear(h, w, b):
            h = matmul(h, w)
            return h if b is None else h + pick(b)

        up = linear(x, self.up, self.up_bias)
        h = activate(self.act, linear(x, self.gate, self.gate_bias), up) if self.gate is not None \
            else activate(self.act, up)
        return linear(h, self.down, self.down_bias)

    def one(self, e: int, x):
        """Expert ``e`` alone on its rows ``x``."""
        return self.run(x, lambda h, W: F.linear(h, W[e]), lambda b: b[e])


def _bmm(h, W):
    """A batched product by (E, out, in) weights: ``h`` is (E, rows, in)."""
    return torch.bmm(h, W.transpose(1, 2))


class MoELayer(nn.Module):
    """A routed FFN: each token goes to ``top_k`` of E experts, plus any shared expert.

    ``strategy`` (one of :data:`STRATEGIES` and :data:`SPEED_STRATEGIES`) changes how the experts are
    computed, not what:

    * ``"grouped_mm"`` sorts the routed (token, expert) rows by expert and runs each weight
      matrix as one ``torch._grouped_mm``: k*N rows of matmul work;
    * ``"loop"`` gathers each expert's tokens, multiplies, and scatter-adds back: the same work;
    * ``"threads"`` is the loop with whole experts dealt out to torch's threads, each expert's
      matmuls on one thread, instead of every small matmul split over all of them: the same work
      (on CPU, without gradients; otherwise, and under a FLOP counter, it runs as ``"loop"``);
    * ``"dense"`` runs every expert on every token and zeroes the unchosen: E/k times the work;
    * ``"onehot"`` (GShard, fairseq) builds one-hot (N, E, C) dispatch and combine tensors and
      moves tokens into per-expert buffers of capacity C by einsum: 2*N*E*C*D FLOPs each way
      of pure data movement, and the experts run on all E*C buffer rows, padding included;
    * ``"gather"`` copies each expert's tokens into a padded (E, C, D) buffer by indexing (no
      FLOPs) and runs each weight matrix as one ``torch.bmm``: the experts run on E*C rows, the
      padding up to the busiest expert's load included (chapter "What FLOPs don't count").

    With a capacity factor cf each expert takes at most ``ceil(cf * N * k / E)`` of the N
    tokens' choices (first choices first, then by token order); the rest are dropped (the
    token's residual carries it past). Without one, ``onehot`` uses the largest load as C.

    After a forward pass, ``aux_loss`` is the Switch load-balancing loss E * sum_i f_i * P_i
    (Fedus et al. 2021): f_i the fraction of the N*k routing choices that picked expert i
    (before dropping), P_i the mean router probability of expert i. 1 when perfectly balanced.
    ``load`` holds the choices per expert and ``dropped`` how many were dropped.
    """

    def __init__(self, D: int, m: MoE, strategy: str, capacity_factor: float = None):
        super().__init__()
        self.m, self.strategy = m, strategy
        self.capacity_factor = capacity_factor if capacity_factor is not None else m.capacity_factor
        self.router = nn.Linear(D, m.experts, bias=m.router_bias)
        # DeepSeek-V3's selection bias, set outside gradient descent: a parameter or a buffer, as the spec says
        if m.score_bias and getattr(m, "score_bias_buffer", False):
            self.register_buffer("score_bias", torch.zeros(m.experts))
        else:
            self.score_bias = nn.Parameter(torch.zeros(m.experts), requires_grad=False) if m.score_bias else None
        self.experts = Experts(m.experts, D, m.expert)
        self.shared = FeedForward(D, m.shared) if m.shared is not None else None
        self.shared_gate = nn.Linear(D, 1, bias=False) if m.shared_gate else None
        if strategy == "grouped_mm" and not _grouped_mm_works(D, m.expert.width):
            warnings.warn(f"torch._grouped_mm cannot run D={D}, F={m.expert.width} here (on CPU it needs "
                          "rows of a multiple of 16 bytes); this layer uses the 'loop' strategy")
            self.strategy = "loop"
        self.aux_loss = self.load = self.dropped = None

    def route(self, x):
        """Each token's k experts ``idx`` (N, k), their weights ``w`` (N, k), and every expert's
        probability ``p`` (N, E) for the balance loss."""
        m, logits = self.m, self.router(x)
        scores = torch.sigmoid(logits) if m.router == "sigmoid_topk" else logits.softmax(dim=-1)
        choose = scores if self.score_bias is None else scores + self.score_bias  # selection only
        idx = choose.topk(m.top_k, dim=-1).indices
        if m.router == "topk_softmax":
            w = logits.gather(1, idx).softmax(dim=-1)
        else:
            w = scores.gather(1, idx)
            if m.router == "sigmoid_topk":
                w = w / w.sum(dim=-1, keepdim=True)
        p = scores / scores.sum(dim=-1, keepdim=True) if m.router == "sigmoid_topk" else scores
        return idx, w, p

    def forward(self, x):
        if x.is_meta:
            return self._on_meta(x)
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        N, E, k = x.shape[0], self.m.experts, self.m.top_k
        idx, w, p = self.route(x)
        load = torch.bincount(idx.reshape(-1), minlength=E)
        self.load = load
        self.aux_loss = E * ((load.to(p.dtype) / (N * k)) * p.mean(dim=0)).sum()
        # the routed (token, expert) choices, first choices of all tokens first
        expert, token, weight = idx.t().reshape(-1), torch.arange(N).repeat(k), w.t().reshape(-1)
        slot = _rank_within(expert, load)  # a choice's place in its expert's queue
        cap = math.ceil(self.capacity_factor * N * k / E) if self.capacity_factor is not None else None
        if cap is not None:
            keep = slot < cap
            self.dropped = int((~keep).sum())
            expert, token, weight, slot = expert[keep], token[keep], weight[keep], slot[keep]
        else:
            self.dropped = 0
        strategy = self.strategy
        if strategy == "grouped_mm" and not _grouped_mm_works(x.shape[1], self.m.expert.width, x.dtype):
            strategy = "loop"  # e.g. float64, which torch._grouped_mm has no kernel for
        y = getattr(self, "_" + strategy)(x, expert, token, weight, slot, cap)
        if self.shared is not None:
            s = self.shared(x)
            y = y + (torch.sigmoid(self.shared_gate(x)) * s if self.shared_gate is not None else s)
        return y.view(shape)

    def _on_meta(self, x):
        """The layer on the meta device, where a full-size model has shapes but no values (chapter
        "Real models, counted"): the router runs, but with no scores to choose by, the N*k routed
        rows are dealt out evenly -- q = N*k // E rows to every expert, one more to the first
        N*k % E -- and each expert matrix runs as a batched matmul. Any dropless routing does the
        same expert FLOPs (2 per weight per routed row), so a FLOP count on meta is the count of
        a real forward pass. The output carries the shared expert only (there is nothing to mix)."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        N, E, k = x.shape[0], self.m.experts, self.m.top_k
        self.router(x)
        q, r = divmod(N * k, E)
        rows = x.repeat(k, 1)
        if q:
            self.experts.run(rows[:q * E].reshape(E, q, -1), _bmm, lambda b: b[:, None])
        if r:
            self.experts.run(rows[q * E:].reshape(r, 1, -1), lambda h, W: _bmm(h, W[:r]), lambda b: b[:r, None])
        self.aux_loss = self.load = None
        self.dropped = 0
        y = torch.zeros_like(x)
        if self.shared is not None:
            s = self.shared(x)
            y = y + (torch.sigmoid(self.shared_gate(x)) * s if self.shared_gate is not None else s)
        return y.view(shape)

    def _loop(self, x, expert, token, weight, slot, cap, parallel=False):
        # one sort; then each expert's choices are a slice, and experts no token chose are skipped
        # (at small batches most are: the loop then reads only the experts the batch reached)
        order = expert.argsort(stable=True)
        token, weight = token[order], weight[order, None]
        counts = torch.bincount(expert, minlength=self.m.experts).tolist()
        starts = [0]
        for n in counts:
            starts.append(starts[-1] + n)
        out = x.new_empty(len(token), x.shape[1])

        def work(experts):  # gather, multiply, weight: each expert writes its own rows of out
            for e in experts:
                s, t = starts[e], starts[e + 1]
                out[s:t] = self.experts.one(e, x.index_select(0, token[s:t])) * weight[s:t]

        chosen = [e for e, n in enumerate(counts) if n]
        if parallel and _can_deal_out(x):
            _deal_out(work, chosen, counts)
        else:
            work(chosen)
        return torch.zeros_like(x).index_add_(0, token, out)

    def _threads(self, x, expert, token, weight, slot, cap):
        return self._loop(x, expert, token, weight, slot, cap, parallel=True)

    def _grouped_mm(self, x, expert, token, weight, slot, cap):
        order = expert.argsort(stable=True)
        expert, token, weight = expert[order], token[order], weight[order]
        offs = torch.bincount(expert, minlength=self.m.experts).cumsum(0).to(torch.int32)
        out = self.experts.run(x[token], lambda h, W: torch._grouped_mm(h, W.transpose(1, 2), offs=offs),
                               lambda b: b[expert])
        return torch.zeros_like(x).index_add_(0, token, out * weight[:, None])

    def _dense(self, x, expert, token, weight, slot, cap):
        E = self.m.experts
        out = self.experts.run(x.expand(E, -1, -1), _bmm, lambda b: b[:, None])  # (E, N, D)
        gates = torch.zeros(E, x.shape[0], dtype=x.dtype).index_put_((expert, token), weight)
        return (out * gates[..., None]).sum(dim=0)  # elementwise: the counter sees only the bmm's

    def _gather(self, x, expert, token, weight, slot, cap):
        C = cap if cap is not None else int(self.load.max())
        buffers = x.new_zeros(self.m.experts, C, x.shape[1])
        buffers[expert, slot] = x[token]  # expert e's tokens in rows 0.. of buffer e, zeros after
        out = self.experts.run(buffers, _bmm, lambda b: b[:, None])  # (E, C, D): one bmm per matrix
        return torch.zeros_like(x).index_add_(0, token, out[expert, slot] * weight[:, None])

    def _onehot(self, x, expert, token, weight, slot, cap):
        E, N = self.m.experts, x.shape[0]
        C = cap if cap is not None else int(self.load.max())
        dispatch = torch.zeros(N, E, C, dtype=x.dtype).index_put_((token, expert, slot), torch.ones_like(weight))
        combine = torch.zeros(N, E, C, dtype=x.dtype).index_put_((token, expert, slot), weight)
        buffers = torch.einsum("nec,nd->ecd", dispatch, x)  # a matmul that only moves rows
        out = self.experts.run(buffers, _bmm, lambda b: b[:, None])  # (E, C, D), padding too
        return torch.einsum("nec,ecd->nd", combine, out)


def _can_deal_out(x: torch.Tensor) -> bool:
    """Whether the experts may run on threads of their own: on CPU, with more than one torch
    thread, and with no per-thread state the worker threads would not see -- gradients, autocast,
    or a dispatch or function mode such as the FLOP counter (each is local to the thread)."""
    return (x.device.type == "cpu" and torch.get_num_threads() > 1 and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu") and not is_in_torch_dispatch_mode()
            and not torch._C._is_torch_function_mode_enabled())


def _deal_out(work, experts: list, rows: list):
    """Run ``work(share)`` on each of torch's n threads at once, the ``experts`` dealt out so that
    every share has about the same number of ``rows`` (busiest expert first, each to the share with
    the fewest rows so far), every thread's matmuls on that thread alone. torch's thread count is
    restored afterwards."""
    n = torch.get_num_threads()
    shares, total = [[] for _ in range(n)], [0] * n
    for e in sorted(experts, key=lambda e: -rows[e]):
        i = total.index(min(total))
        shares[i].append(e)
        total[i] += rows[e]
    inference, errors = torch.is_inference_mode_enabled(), []

    def worker(share):
        try:
            torch.set_num_threads(1)
            with torch.inference_mode(inference), torch.no_grad():
                work(share)
        except BaseException as error:  # noqa: BLE001 (re-raised in the calling thread)
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(share,)) for share in shares[1:] if share]
    try:
        for t in threads:
            t.start()
        torch.set_num_threads(1)
        work(shares[0])
    finally:
        for t in threads:
            t.join()
        torch.set_num_threads(n)
    if errors:
        raise errors[0]


def _rank_within(expert, load):
    """For each choice, how many earlier choices went to the same expert."""
    order = expert.argsort(stable=True)
    start = load.cumsum(0) - load
    rank = torch.empty_like(expert)
    rank[order] = torch.arange(len(expert)) - start[expert[order]]
    return rank


def _grouped_mm_works(D: int, F_: int, dtype=torch.float32) -> bool:
    """torch 2.13's grouped matmul takes float32/bf16/fp16 rows of a multiple of 16 bytes.
    (Arithmetic, not a trial call: a trial inside a FLOP counter would be counted.)"""
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    size = torch.empty((), dtype=dtype).element_size()
    return D * size % 16 == 0 and F_ * size % 16 == 0


# ---------------------------------------------------------------------------------------------
# the transformer

class Block(nn.Module):
    """One pre-norm layer: self-attention, cross-attention (decoder of an encoder-decoder), FFN or MoE."""

    def __init__(self, s: Transformer, moe: bool, cross: bool, rotary: bool, strategy: str, capacity_factor):
        super().__init__()
        D = s.width
        self.attn_norm, self.attn = make_norm(s.norm, D), SelfAttention(D, s.attention, rotary)
        self.cross_norm = make_norm(s.norm, D) if cross else None
        self.cross = SelfAttention(D, s.attention, rotary) if cross else None
        self.ffn_norm = make_norm(s.norm, D)
        self.ffn = MoELayer(D, s.moe, strategy, capacity_factor) if moe else FeedForward(D, s.ffn)

    def forward(self, x, mask, causal, memory=None):
        x = x + self.attn(self.attn_norm(x), mask=mask, causal=causal)
        if self.cross is not None:
            x = x + self.cross(self.cross_norm(x), source=memory)
        return x + self.ffn(self.ffn_norm(x))


class Stack(nn.Module):
    """The encoder or the decoder: layers, a T5 relative-position bias shared by its layers
    (if ``relative_buckets``), a final norm."""

    def __init__(self, s: Transformer, layers: int, moe_layers, decoder: bool, cross: bool, strategy, capacity_factor):
        super().__init__()
        self.s, self.decoder = s, decoder
        rotary = not s.positions and not s.relative_buckets
        self.blocks = nn.ModuleList(Block(s, i in moe_layers, cross, rotary, strategy, capacity_factor)
                                    for i in range(layers))
        self.relative_bias = nn.Embedding(s.relative_buckets, s.attention.heads) if s.relative_buckets else None
        self.norm = make_norm(s.norm, s.width)

    def masks(self, T):
        """Per layer: an additive (H or 1, T, T) mask, or None for plain (causal) attention."""
        s, bias = self.s, None
        if self.relative_bias is not None:
            buckets = relative_buckets(T, T, s.relative_buckets, bidirectional=not self.decoder)
            bias = self.relative_bias(buckets).permute(2, 0, 1)  # a lookup: 0 FLOPs
        masks = []
        for i in range(len(self.blocks)):
            if not self.decoder:
                masks.append(bias)
                continue
            if bias is None and i not in s.sliding_layers:
                masks.append(None)  # SDPA's is_causal
                continue
            q, key = torch.arange(T)[:, None], torch.arange(T)[None, :]
            allowed = key <= q
            if i in s.sliding_layers:
                allowed &= q - key < s.sliding_window
            m = torch.zeros(T, T).masked_fill(~allowed, float("-inf"))
            masks.append(m if bias is None else bias + m)
        return masks

    def forward(self, x, memory=None):
        for block, mask in zip(self.blocks, self.masks(x.shape[1])):
            x = block(x, mask.to(x.dtype) if mask is not None else None, self.decoder, memory)
        return self.norm(x)


class TransformerLM(nn.Module):
    """Token ids (B, T) -> logits (B, T, V). An encoder-decoder reads the same ids in both stacks."""

    def __init__(self, s: Transformer, strategy: str = STRATEGIES[0], capacity_factor: float = None):
        super().__init__()
        self.spec = s
        self.embed = nn.Embedding(s.vocab, s.width)
        self.positions = nn.Embedding(s.positions, s.width) if s.positions else None
        self.encoder = Stack(s, s.encoder_layers, s.encoder_moe_layers, False, False, strategy, capacity_factor) \
            if s.encoder_decoder else None
        self.decoder = Stack(s, s.layers, s.moe_layers, True, s.encoder_decoder, strategy, capacity_factor)
        self.head = None if s.tied else nn.Linear(s.width, s.vocab, bias=False)
        for mod in self.modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                nn.init.normal_(mod.weight, std=0.02)
                if getattr(mod, "bias", None) is not None:
                    nn.init.zeros_(mod.bias)

    def forward(self, ids):
        x = self.embed(ids)
        if self.positions is not None:
            if ids.shape[1] > self.positions.num_embeddings:
                raise ValueError(f"{ids.shape[1]} tokens, but the position table has {self.positions.num_embeddings} rows")
            x = x + self.positions(torch.arange(ids.shape[1]))
        memory = self.encoder(x) if self.encoder is not None else None
        h = self.decoder(x, memory)
        return F.linear(h, self.embed.weight if self.head is None else self.head.weight)

    def moe_layers(self):
        return [m for m in self.modules() if isinstance(m, MoELayer)]

    def aux_loss(self) -> torch.Tensor:
        """The Switch load-balancing loss of the last forward pass, summed over the MoE layers."""
        losses = [m.aux_loss for m in self.moe_layers() if m.aux_loss is not None]
        return torch.stack(losses).sum() if losses else torch.zeros(())


# ---------------------------------------------------------------------------------------------
# the recommendation model

def mlp(widths, relu_last: bool) -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if relu_last or i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DLRM(nn.Module):
    """A DLRM: ``forward(dense (B, dense_features), sparse)`` -> (B, top_mlp[-1]) logits.

    ``sparse`` is a LongTensor (B, n_tables, pooling) when every table has the same pooling, or
    a list of (B, pooling_i) LongTensors; each table sums its ``pooling`` rows (an
    ``EmbeddingBag``: a lookup, 0 FLOPs). With ``interaction="dot"`` the 1 + n vectors meet in
    pairwise dot products (one batched matmul), of which the strict lower triangle is kept.
    """

    def __init__(self, s: EmbeddingModel, sparse: bool = False):
        super().__init__()
        self.spec = s
        self.bottom = mlp([s.dense_features, *s.bottom_mlp], relu_last=True)
        self.tables = nn.ModuleList(nn.EmbeddingBag(t.rows, t.dim, mode="sum", sparse=sparse) for t in s.tables)
        self.top = mlp([s.interaction_width, *s.top_mlp], relu_last=False)

    def forward(self, dense, sparse):
        z = self.bottom(dense)
        pooled = [table(ids) for table, ids in zip(self.tables, sparse.unbind(1) if torch.is_tensor(sparse) else sparse)]
        if self.spec.interaction == "dot":
            v = torch.stack([z, *pooled], dim=1)  # (B, n, dim)
            dots = torch.bmm(v, v.transpose(1, 2))
            i, j = torch.tril_indices(v.shape[1], v.shape[1], offset=-1)
            features = torch.cat([z, dots[:, i, j]], dim=1)
        else:
            features = torch.cat([z, *pooled], dim=1)
        return self.top(features)
