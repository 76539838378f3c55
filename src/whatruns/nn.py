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
import os
import queue as _queue
import threading
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.weak
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from .spec import FFN, Attention, Block, EmbeddingModel, LinearAttention, Mamba2, MoE, Norm, Rope, SpecError, Transformer

STRATEGIES = ("grouped_mm", "loop", "dense", "onehot")
"""How a MoE layer computes its experts (see :class:`MoELayer`), tabulated one by one in chapter "Mixture of
experts". :func:`build`'s default is :data:`AUTO`, which picks one per call."""
SPEED_STRATEGIES = ("threads", "gather")
"""More strategies :func:`build` accepts, compared for speed in chapter "What FLOPs don't count": the loop
with experts dealt out to threads (the loop's FLOPs, forward and backward) and a padded batch (more). Kept
out of :data:`STRATEGIES`, which chapter "Mixture of experts" tabulates one by one."""
AUTO = "auto"
""":func:`build`'s default strategy: per call, the fastest exact one for the situation (see
:func:`auto_strategy`). Under a FLOP counter it is ``"grouped_mm"``, so a count of a default build is the
count the book's chapters print."""


THREADS_MIN_ROWS = 24
"""The fewest routed rows per expert, on average, at which ``"auto"`` deals experts out to threads on a CPU."""


def auto_strategy(x: torch.Tensor, rows_per_expert: float = math.inf) -> str:
    """The strategy ``"auto"`` runs on rows ``x`` when the experts get ``rows_per_expert`` routed rows each on
    average: ``"threads"`` on CPU where nothing per-thread is on and the experts average at least
    :data:`THREADS_MIN_ROWS` rows (the threaded loop, with its own backward, so in training too: exact, the
    loop's FLOPs, and the fastest on CPU in the benchmark of chapter "What FLOPs don't count", on one thread
    as on several); ``"grouped_mm"`` anywhere else. With fewer rows (decoding: 8 tokens give 16 rows to 64
    experts) an expert's products are little more than a read of its weights, which torch's threads share
    faster inside each product. The MoE layer of chapter "What FLOPs don't count" (64 experts, top-2) on a
    2-core Xeon, grouped against threaded: 8 tokens 4.8 against 10.5 ms, 64 tokens 25 against 30, 512 tokens
    (16 rows an expert) 55 against 57; from 1,024 tokens (32 rows) threads are ahead, 67 against 75. Elsewhere
    -- another device, autocast, a jit trace, torch.compile, or a dispatch or function mode such as the FLOP
    counter, which :mod:`whatruns.measure` counts exactly (every expert product, the counter's own formula for
    ``_grouped_mm``) -- always ``"grouped_mm"``. A dtype ``torch._grouped_mm`` cannot run (float64) then
    falls back to the loop, as ``"grouped_mm"`` always does."""
    return "threads" if rows_per_expert >= THREADS_MIN_ROWS and _threads_see_the_state(x) else "grouped_mm"


def build(spec, *, seed: int = 0, moe_strategy: str = AUTO, capacity_factor: float = None,
          sparse: bool = False, dtype=torch.float32) -> nn.Module:
    """A torch module for ``spec``: a :class:`TransformerLM` or a :class:`DLRM`.

    ``moe_strategy`` is ``"auto"`` (the default: per call, the fastest exact strategy for the situation,
    :func:`auto_strategy`) or one of :data:`STRATEGIES` or :data:`SPEED_STRATEGIES`, which compute the same
    function in different ways (:class:`MoELayer`); ``capacity_factor`` overrides the spec's
    (None: the spec's, which is None for dropless); ``sparse`` gives a DLRM's tables sparse
    gradients. The weights depend on ``seed`` only (the global RNG is left as it was).
    """
    if moe_strategy not in (AUTO,) + STRATEGIES + SPEED_STRATEGIES:
        raise SpecError(f"moe_strategy must be one of {', '.join((AUTO,) + STRATEGIES + SPEED_STRATEGIES)}, "
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

class RMSNorm(nn.Module):
    """RMSNorm computed in float32: x / sqrt(mean(x^2) + eps) times w, or (1 + w) with ``offset`` (Gemma),
    or no weight at all (``weight=False``: Gemma 4's value norm)."""

    def __init__(self, width: int, eps: float = 1e-6, offset: bool = False, weight: bool = True):
        super().__init__()
        self.eps, self.offset = eps, offset
        self.weight = nn.Parameter(torch.zeros(width) if offset else torch.ones(width)) if weight else None

    def forward(self, x):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is None:
            return h.to(x.dtype)
        if self.offset:
            return (h * (1.0 + self.weight.float())).to(x.dtype)
        return self.weight * h.to(x.dtype)


def make_norm(norm: Norm, width: int) -> nn.Module:
    if norm.kind == "layernorm":
        return nn.LayerNorm(width, bias=norm.bias, eps=1e-5 if norm.eps is None else norm.eps)
    if norm.offset:
        return RMSNorm(width, 1e-6 if norm.eps is None else norm.eps, offset=True)
    return nn.RMSNorm(width, eps=1e-6 if norm.eps is None else norm.eps)


def activate(name: str, gate: torch.Tensor, up: torch.Tensor = None, clamp: float = 0.0) -> torch.Tensor:
    """The FFN's nonlinearity: ``act(gate) * up`` for a gated FFN, ``act(gate)`` for a plain one; with ``clamp``
    c, act(gate) clamped to at most c and up to [-c, c] (Step 3.5's SwiGLU limits)."""
    if clamp:
        h = activate(name, gate).clamp(max=clamp)
        return h if up is None else h * up.clamp(-clamp, clamp)
    if name == "swiglu_oai":  # gpt-oss: clamped, x * sigmoid(1.702 x), and (up + 1)
        gate = gate.clamp(max=7.0)
        h = gate * torch.sigmoid(1.702 * gate)
        return h if up is None else h * (up.clamp(-7.0, 7.0) + 1)
    h = {"silu": F.silu, "relu": F.relu, "gelu": F.gelu, "relu2": lambda x: F.relu(x).square(),
         "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}[name](gate)
    return h if up is None else h * up


class FeedForward(nn.Module):
    """One FFN of width F: ``down(act(gate(x)) * up(x))``, or ``down(act(up(x)))`` when plain."""

    def __init__(self, D: int, f: FFN):
        super().__init__()
        self.act, self.clamp = f.activation, f.clamp
        self.gate = nn.Linear(D, f.width, bias=f.bias) if f.gated else None
        self.up = nn.Linear(D, f.width, bias=f.bias)
        self.down = nn.Linear(f.width, D, bias=f.bias)

    def forward(self, x):
        h = activate(self.act, self.gate(x), self.up(x), self.clamp) if self.gate is not None \
            else activate(self.act, self.up(x), clamp=self.clamp)
        return self.down(h)


def rotate(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding over the last dim of ``x`` (..., T, d), positions 0..T-1, the default
    frequencies; elementwise, 0 FLOPs counted. :class:`Rotary` applies a spec's :class:`~whatruns.spec.Rope`."""
    return Rotary(Rope(theta=base), x.shape[-1])(x, torch.arange(x.shape[-2]))


def rope_frequencies(rope: Rope, dim: int, head_dim: int, seq_len: int = 0):
    """The inverse frequencies of a :class:`~whatruns.spec.Rope` over ``dim`` rotated features of a head of
    ``head_dim`` (float32, ``dim // 2`` of them), and the factor its scaling puts on cos and sin -- the
    formulas of the rope types (linear: Kaiokendev; dynamic NTK; YaRN, Peng et al. 2023; Llama 3.1; LongRoPE;
    Gemma 4's proportional), as Hugging Face's configs name and parametrise them. ``seq_len``: the context
    the dynamic and LongRoPE scalings adapt to."""
    j = torch.arange(0, dim, 2, dtype=torch.int64).float()
    base, factor = float(rope.theta), float(rope.factor)
    if rope.scaling == "default":
        return base ** (-j / dim), 1.0
    if rope.scaling == "linear":
        return (1.0 / base ** (j / dim)) / factor, 1.0
    if rope.scaling == "proportional":  # frequencies of the first dim features, counted over the whole head
        angles = int(dim // 2)
        inv = 1.0 / base ** (torch.arange(0, 2 * angles, 2, dtype=torch.int64).float() / head_dim)
        return inv / factor, 1.0
    if rope.scaling == "dynamic":
        max_pos = rope.max_positions or rope.original_positions
        seq = max(seq_len, max_pos)
        base = base * ((factor * seq / max_pos) - (factor - 1)) ** (dim / (dim - 2))
        return 1.0 / base ** (j / dim), 1.0
    if rope.scaling == "llama3":
        inv = 1.0 / base ** (j / dim)
        old = rope.original_positions
        low_wavelen, high_wavelen = old / rope.low_freq_factor, old / rope.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, smoothed, scaled), 1.0
    if rope.scaling == "longrope":
        old = rope.original_positions
        f = factor if factor != 1.0 or not rope.max_positions else rope.max_positions / old
        attention = rope.attention_factor
        if attention is None:
            attention = 1.0 if f <= 1.0 else math.sqrt(1 + math.log(f) / math.log(old))
        if rope.short_mscale is not None:  # PhiMoE: the short factors whatever the length, a scale by length
            attention = rope.long_mscale if seq_len > old and rope.long_mscale is not None else rope.short_mscale
            ext = torch.tensor(rope.short_factor, dtype=torch.float32)
            return 1.0 / (ext * base ** (j / dim)), attention
        ext = torch.tensor(rope.long_factor if seq_len > old else rope.short_factor, dtype=torch.float32)
        return 1.0 / (ext * base ** (j / dim)), attention
    # yarn
    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = rope.attention_factor
    if attention is None:
        attention = (mscale(factor, rope.mscale) / mscale(factor, rope.mscale_all_dim)
                     if rope.mscale and rope.mscale_all_dim else mscale(factor))
    old = rope.original_positions

    def correction(rotations):
        return dim * math.log(old / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction(rope.beta_fast or 32), correction(rope.beta_slow or 1)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation = 1 - ramp
    pos = base ** (j / dim)
    inv = (1.0 / (factor * pos)) * (1 - extrapolation) + (1.0 / pos) * extrapolation
    return inv, float(attention)


class Rotary(nn.Module):
    """A :class:`~whatruns.spec.Rope` applied to queries or keys (..., T, head_dim): the first ``dim``
    features of each head rotated (the two halves against each other; neighbouring pairs first brought
    together when ``interleaved``), the rest passed through. No parameters; cos and sin come from the
    positions by broadcasting, so a FLOP counter sees nothing."""

    def __init__(self, rope: Rope, head_dim: int):
        super().__init__()
        self.rope, self.head_dim = rope, head_dim
        self.dim = (head_dim if rope.scaling == "proportional" else rope.dim or head_dim) // 2 * 2  # pairs

    def angles(self, positions: torch.Tensor, dtype, seq_len: int):
        """cos and sin (..., T, dim) for integer ``positions`` (T,) or (B, T)."""
        rotated = self.rope.dim if self.rope.scaling == "proportional" else self.dim
        inv, factor = rope_frequencies(self.rope, rotated, self.head_dim, seq_len)
        if self.rope.scaling == "proportional" and inv.numel() < self.dim // 2:  # the unrotated pairs: angle 0
            inv = torch.cat([inv, torch.zeros(self.dim // 2 - inv.numel())])
        angle = positions.float()[..., None] * inv  # broadcast, not a matmul
        angle = torch.cat([angle, angle], dim=-1)
        return (angle.cos() * factor).to(dtype), (angle.sin() * factor).to(dtype)

    def forward(self, x, positions, seq_len: int = 0):
        d = self.dim
        if d == 0:
            return x
        cos, sin = self.angles(positions, x.dtype, seq_len)
        if cos.dim() == 3:  # per-sequence positions (B, T, d): one row per sequence, broadcast over heads
            cos, sin = cos[:, None], sin[:, None]
        r, rest = x[..., :d], x[..., d:]
        if self.rope.interleaved:  # (x0, x1), (x2, x3) ... -> [x0, x2, ... | x1, x3, ...]
            r = r.view(*r.shape[:-1], d // 2, 2).transpose(-1, -2).reshape(r.shape)
        half = d // 2
        rotated = torch.cat([-r[..., half:], r[..., :half]], dim=-1)
        return torch.cat([r * cos + rotated * sin, rest], dim=-1)


def relative_buckets(T: int, S: int, buckets: int, bidirectional: bool, max_distance: int = 128, offsets=None):
    """T5's bucket of each (query, key) offset, as transformers' ``_relative_position_bucket`` computes it:
    the sign (bidirectional: half the buckets each), then exact for offsets below half of those buckets,
    logarithmic up to ``max_distance``, the last bucket beyond. ``offsets``: key minus query position, given
    (default: those of T queries and S keys from position 0). (Degenerate sizes transformers cannot compute --
    fewer than two buckets a side, ``max_distance`` not above the exact range -- get the nearest sane buckets.)"""
    rel = torch.arange(S)[None, :] - torch.arange(T)[:, None] if offsets is None else offsets
    n, out = buckets, torch.zeros_like(rel)
    if bidirectional:
        n = buckets // 2
        out = (rel > 0).long() * n
        rel = rel.abs()
    else:
        rel = -torch.min(rel, torch.zeros_like(rel))
    exact = max(n // 2, 1)
    ratio = max_distance / exact if max_distance > exact else 2.0
    far = exact + (torch.log(rel.float().clamp(min=1) / exact) / math.log(ratio) * (max(n, 2) - exact)).long()
    return (out + torch.where(rel < exact, rel, far.clamp(max=max(n, 2) - 1))).clamp(0, buckets - 1)


# ---------------------------------------------------------------------------------------------
# attention

class SelfAttention(nn.Module):
    """MHA / GQA / MQA, or MLA (DeepSeek-V2/V3, computed the naive way: keys and values are
    expanded from the latent); cross-attention when called with ``source``. Options of the spec:
    QK-norm per head or over all heads, a sigmoid output gate, sinks, and a sparse-attention indexer
    (its top-k keys per query become a mask over all T keys, so the attention's FLOPs are those of
    T keys, as :func:`whatruns.count.mean_keys` counts without ``causal``). The function follows the
    spec's rope, softmax scale, soft-cap, value scale and q/k/v clipping; ``norm`` is the model's norm
    (the QK-norms take its eps and its (1 + w) form)."""

    def __init__(self, D: int, a: Attention, rotary: bool, norm: Norm = Norm()):
        super().__init__()
        self.a = a
        H, K, dh, dv = a.heads, a.kv_heads, a.head_dim, a.v_head_dim
        q_out = H * dh * (2 if a.gate == "channel" else 1)
        if a.mla:
            if a.q_lora_rank:
                self.q_a = nn.Linear(D, a.q_lora_rank, bias=a.bias)
                self.q_norm = nn.RMSNorm(a.q_lora_rank, eps=1e-6)
                self.q_b = nn.Linear(a.q_lora_rank, q_out, bias=False)
            else:
                self.q = nn.Linear(D, q_out, bias=False)
            self.kv_a = nn.Linear(D, a.kv_lora_rank + a.rope_head_dim, bias=a.bias)  # latent + rope key
            self.kv_norm = nn.RMSNorm(a.kv_lora_rank, eps=1e-6)
            self.kv_b = nn.Linear(a.kv_lora_rank, H * (dh - a.rope_head_dim + dv), bias=False)
        else:
            self.q = nn.Linear(D, q_out, bias=a.bias)
            self.k = nn.Linear(D, K * dh, bias=a.bias) if not a.kv_shared else None
            self.v = nn.Linear(D, K * dv, bias=a.bias) if not (a.kv_shared or a.values_from_keys) else None
        self.o = nn.Linear(H * dv, D, bias=a.out_bias)
        self.g = nn.Linear(D, H, bias=False) if a.gate == "head" else None
        norm_q, norm_k = {"head": (dh, dh), "full": (H * dh, K * dh)}.get(a.qk_norm, (0, 0))
        norm_k = 0 if a.kv_shared else norm_k
        head_norm = Norm("rmsnorm", eps=norm.eps, offset=norm.offset)
        self.q_head_norm = make_norm(head_norm, norm_q) if norm_q else None
        self.k_head_norm = make_norm(head_norm, norm_k) if norm_k else None
        self.sinks = nn.Parameter(torch.zeros(H)) if a.sinks else None
        self.eps = 1e-6 if norm.eps is None else norm.eps  # the L2 QK-norm's and the value norm's
        self.v_norm = RMSNorm(dv, self.eps, weight=False) if a.v_norm and not a.kv_shared else None
        self.rotary = Rotary(a.rope, a.rope_head_dim if a.mla else dh) if rotary and a.rope is not None else None
        self.indexer = Indexer(D, a, self.rotary) if a.indexer is not None and not a.indexer.shared else None

    def heads(self, x, n, d):  # (B, T, n*d) -> (B, n, T, d)
        return x.view(x.shape[0], x.shape[1], n, d).transpose(1, 2)

    def forward(self, x, source=None, mask=None, causal=False, state=None, positions=None, cache=None):
        if cache is not None:
            return self._step(x, positions, cache, state)
        a = self.a
        H, K, dh, dv = a.heads, a.kv_heads, a.head_dim, a.v_head_dim
        B, T = x.shape[:2]
        rotary = self.rotary if source is None else None  # no positions across the encoder/decoder gap
        if positions is None:
            positions = torch.arange(T)
        source = x if source is None else source
        clip = (lambda t: t.clamp(-a.clip_qkv, a.clip_qkv)) if a.clip_qkv else (lambda t: t)
        q_latent = None
        if a.mla:
            if a.q_lora_rank:
                q_latent = self.q_norm(self.q_a(x))
                q = self.q_b(q_latent)
            else:
                q = self.q(x)
        else:
            q = self.q(x)
        gate = None
        if a.gate == "channel":  # each head's query and its gate, side by side
            q, gate = q.view(B, T, H, 2 * dh).split([dh, dh], dim=-1)
            q, gate = q.reshape(B, T, H * dh), gate.reshape(B, T, H * dh)
        if a.mla:
            r, nope = a.rope_head_dim, a.head_dim - a.rope_head_dim
            q_nope, q_rope = self.heads(q, H, dh).split([nope, r], dim=-1)
            latent, k_rope = self.kv_a(source).split([a.kv_lora_rank, r], dim=-1)
            k_nope, v = self.heads(self.kv_b(self.kv_norm(latent)), H, nope + dv).split([nope, dv], dim=-1)
            k_rope = k_rope.unsqueeze(1)  # one rope key shared by all heads
            if rotary is not None:
                q_rope, k_rope = rotary(q_rope, positions, T), rotary(k_rope, positions, T)
            q = torch.cat([q_nope, q_rope], dim=-1)
            k = torch.cat([k_nope, k_rope.expand(-1, H, -1, -1)], dim=-1)
        elif a.kv_shared:  # keys and values made by an earlier layer of this kind
            if a.qk_norm == "full":
                q = self.q_head_norm(q)
            q = self.heads(q, H, dh)
            if a.qk_norm == "head":
                q = self.q_head_norm(q)
            if rotary is not None:
                q = rotary(q, positions, T)
            k, v = state["kv"][a.kv_kind]
        else:
            k = self.k(source)
            v = k if a.values_from_keys else self.v(source)
            if a.qk_norm == "full":
                q, k = self.q_head_norm(q), self.k_head_norm(k)
            q, k, v = clip(q), clip(k), clip(v)  # after a norm over all heads (OLMoE), as DBRX's on the projections
            q, k, v = self.heads(q, H, dh), self.heads(k, K, dh), self.heads(v, K, dv)
        if a.qk_norm == "head" and not a.kv_shared:
            q, k = self.q_head_norm(q), self.k_head_norm(k)
        if rotary is not None and not a.mla and not a.kv_shared:
            q, k = rotary(q, positions, T), rotary(k, positions, T)
        if a.qk_l2norm:  # Llama 4: unit-length queries and keys, no weight
            q = _l2norm(q, self.eps)
            k = k if a.kv_shared else _l2norm(k, self.eps)
        if a.temperature:
            q = _temperature(q, a, positions)
        if self.v_norm is not None:
            v = self.v_norm(v)
        if a.value_scale != 1.0 and not a.kv_shared:
            v = v * a.value_scale
        if state is not None and not a.kv_shared and not a.mla and source is x:
            state.setdefault("kv", {})[a.kv_kind] = (k, v)  # for the layers that share them
        if self.indexer is not None:
            mask = self.indexer(x, q_latent, mask, causal, positions=positions)
            if state is not None:
                state["sparse_mask"] = mask  # for the shared layers that follow
        elif a.indexer is not None:  # a shared layer: the keys the last indexer picked
            mask = state["sparse_mask"]
        out = attend(q, k, v, mask, causal, scale=a.scale, softcap=a.softcap, sinks=self.sinks)
        if self.g is not None:  # one gate per head
            out = out * torch.sigmoid(self.g(x)).transpose(1, 2).unsqueeze(-1)
        out = out.transpose(1, 2).reshape(B, T, H * dv)
        if gate is not None:
            out = out * torch.sigmoid(gate)
        return self.o(out)


def _cached_attention(self, x, positions, cache, state):
    """Attention of t new tokens at absolute ``positions`` (t,) over the cached keys and their own: the
    cache (this layer's dict) grows by their keys and values -- K and V; MLA's normalised latent and rotated
    rope key (attended in the latent space: the query's no-position part absorbed into the key
    up-projection, the output expanded by the value one); an indexer's keys -- and keeps, for a sliding
    window or chunks, only the last ``window`` / ``chunk`` positions (the bytes
    :func:`whatruns.serve.kv_cache_bytes` counts). A layer sharing an earlier layer's keys and values
    (``kv_shared``) keeps nothing of its own."""
    a = self.a
    H, K, dh, dv = a.heads, a.kv_heads, a.head_dim, a.v_head_dim
    B, t = x.shape[:2]
    qpos = positions
    rotary = self.rotary
    q_latent = None
    if a.mla:
        r, nope = a.rope_head_dim, dh - a.rope_head_dim
        if a.q_lora_rank:
            q_latent = self.q_norm(self.q_a(x))
            q = self.q_b(q_latent)
        else:
            q = self.q(x)
        q_nope, q_rope = self.heads(q, H, dh).split([nope, r], dim=-1)
        latent, k_rope = self.kv_a(x).split([a.kv_lora_rank, r], dim=-1)
        latent, k_rope = self.kv_norm(latent), k_rope.unsqueeze(1)
        if rotary is not None:
            q_rope, k_rope = rotary(q_rope, qpos, int(qpos[-1]) + 1), rotary(k_rope, qpos, int(qpos[-1]) + 1)
        new = {"latent": latent, "k_rope": k_rope[:, 0]}
    else:
        q = self.q(x)
        gate = None
        if a.gate == "channel":
            q, gate = q.view(B, t, H, 2 * dh).split([dh, dh], dim=-1)
            q, gate = q.reshape(B, t, H * dh), gate.reshape(B, t, H * dh)
        clip = (lambda z: z.clamp(-a.clip_qkv, a.clip_qkv)) if a.clip_qkv else (lambda z: z)
        if a.kv_shared:
            if a.qk_norm == "full":
                q = self.q_head_norm(q)
            q = self.heads(clip(q), H, dh)
            if a.qk_norm == "head":
                q = self.q_head_norm(q)
            if rotary is not None:
                q = rotary(q, qpos, int(qpos[-1]) + 1)
            if a.qk_l2norm:
                q = _l2norm(q, self.eps)
            new = None
        else:
            k = self.k(x)
            v = k if a.values_from_keys else self.v(x)
            if a.qk_norm == "full":
                q, k = self.q_head_norm(q), self.k_head_norm(k)
            q, k, v = self.heads(clip(q), H, dh), self.heads(clip(k), K, dh), self.heads(clip(v), K, dv)
            if a.qk_norm == "head":
                q, k = self.q_head_norm(q), self.k_head_norm(k)
            if rotary is not None:
                q, k = rotary(q, qpos, int(qpos[-1]) + 1), rotary(k, qpos, int(qpos[-1]) + 1)
            if a.qk_l2norm:
                q, k = _l2norm(q, self.eps), _l2norm(k, self.eps)
            if self.v_norm is not None:
                v = self.v_norm(v)
            if a.value_scale != 1.0:
                v = v * a.value_scale
            new = {"k": k, "v": v}
        if a.temperature:
            q = _temperature(q, a, qpos)
    if new is None:  # keys and values of the last layer of this kind, as it left them this step
        keys = state["kv_cache"][a.kv_kind]
    else:
        keys = {n: torch.cat([cache[n], val], dim=-2 if n in ("k", "v") else 1) if n in cache else val
                for n, val in new.items()}
        keys["positions"] = torch.cat([cache["positions"], qpos]) if "positions" in cache else qpos
        if state is not None and not a.mla:
            state.setdefault("kv_cache", {})[a.kv_kind] = dict(keys)  # as this step sees them, untrimmed
    kpos = keys["positions"]
    allowed = kpos[None, :] <= qpos[:, None]
    if a.window:
        allowed &= qpos[:, None] - kpos[None, :] < a.window
    if a.chunk:
        allowed &= qpos[:, None] // a.chunk == kpos[None, :] // a.chunk
    mask = torch.zeros(allowed.shape, dtype=x.dtype).masked_fill(~allowed, float("-inf"))
    if a.indexer is not None:
        if self.indexer is not None:
            mask = self.indexer(x, q_latent, mask, True, cache=cache, positions=qpos)
            state["sparse_mask"] = mask
        else:
            mask = state["sparse_mask"]
    if a.mla:
        W = self.kv_b.weight.view(H, nope + dv, a.kv_lora_rank)
        q_lat = torch.einsum("bhtn,hnr->bhtr", q_nope, W[:, :nope])  # the query in the latent's space
        c, kr = keys["latent"].unsqueeze(1), keys["k_rope"].unsqueeze(1)  # (B, 1, S, r), (B, 1, S, rope)
        scale = a.scale if a.scale is not None else dh ** -0.5
        scores = (q_lat @ c.transpose(-1, -2) + q_rope @ kr.transpose(-1, -2)) * scale
        if a.softcap:
            scores = torch.tanh(scores / a.softcap) * a.softcap
        p = (scores + mask).softmax(dim=-1)
        out = torch.einsum("bhtr,hvr->bhtv", p @ c, W[:, nope:])
    else:
        out = attend(q, keys["k"], keys["v"], mask, False, scale=a.scale, softcap=a.softcap, sinks=self.sinks)
    if new is not None:  # keep what later steps can still see
        keep = a.window or a.chunk
        for n in keys:
            if keep and n not in ("index_k",):
                keys[n] = keys[n][..., -keep:, :] if n in ("k", "v") else keys[n][:, -keep:] if n != "positions" \
                    else keys[n][-keep:]
        cache.update({n: val for n, val in keys.items() if n != "index_k"})
    if self.g is not None:
        out = out * torch.sigmoid(self.g(x)).transpose(1, 2).unsqueeze(-1)
    out = out.transpose(1, 2).reshape(B, t, H * dv)
    if not a.mla and a.gate == "channel":
        out = out * torch.sigmoid(gate)
    return self.o(out)


SelfAttention._step = _cached_attention


def _l2norm(x, eps: float = 1e-6):
    return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _temperature(q, a: Attention, positions):
    """Llama 4's attention-temperature tuning: the query at position p times 1 + t * log(1 + floor((p + 1) / f)),
    queries (B, H, T, d), positions (T,) or (B, T) -- elementwise, 0 FLOPs."""
    scale = torch.log1p(torch.floor((positions.float() + 1.0) / a.temperature_floor)) * a.temperature + 1.0
    scale = scale[..., None] if scale.dim() == 1 else scale[:, None, :, None]
    return (q * scale.to(q.dtype)).to(q.dtype)


def attend(q, k, v, mask=None, causal=False, scale=None, softcap=0.0, sinks=None):
    """Scaled dot-product attention of queries (B, H, T, d) on keys and values (B, K, S, d): SDPA, or,
    for soft-capped scores or attention sinks, the same two matmuls written out. ``scale`` None is
    1/sqrt(d); ``mask`` is additive; ``causal`` applies when there is no mask."""
    if not softcap and sinks is None:  # enable_gqa a bool under jit tracing too (fvcore traces, whose shapes are tensors)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                              scale=scale, enable_gqa=bool(k.shape[1] < q.shape[1]))
    if k.shape[1] < q.shape[1]:
        k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
    scores = q @ k.transpose(-1, -2) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is not None:
        scores = scores + mask
    elif causal:
        scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
    if sinks is not None:  # gpt-oss: a learned logit per head joins the softmax, then is dropped
        sink = sinks.view(1, -1, 1, 1).expand(scores.shape[0], -1, scores.shape[2], 1)
        p = torch.cat([scores, sink], dim=-1).softmax(dim=-1)[..., :-1]
    else:
        p = scores.softmax(dim=-1)
    return p @ v


class Indexer(nn.Module):
    """DeepSeek Sparse Attention's lightning indexer: per query, a score for every key -- the sum over
    Hi heads of w_h * relu(q_h . k / sqrt(di)), q_h from the MLA query latent, one LayerNorm-ed key of di per
    position, w_h from the input, the first rope_head_dim features of q_h and k rotated by the attention's
    rope (two halves, or pairs with the spec's ``interleaved``) -- and the mask that keeps each query's
    ``top_k`` best (visible) keys. FLOPs: its projections, and 2*Hi*(di + 1) per (query, key) pair (two matmuls)."""

    def __init__(self, D: int, a: Attention, rotary: "Rotary" = None):
        super().__init__()
        i = a.indexer
        self.i = i
        self.wq_b = nn.Linear(a.q_lora_rank, i.heads * i.head_dim, bias=False)
        self.wk = nn.Linear(D, i.head_dim, bias=False)
        self.k_norm = nn.LayerNorm(i.head_dim, eps=1e-6)
        self.weights_proj = nn.Linear(D, i.heads, bias=False)
        self.rotary = None
        if rotary is not None:  # the attention's frequencies, over the first rope_head_dim features
            self.rotary = Rotary(rotary.rope.with_(dim=rotary.dim, interleaved=i.interleaved), i.head_dim)

    def scores(self, x, q_latent, positions=None, cache=None):
        """Every query's score for every key (B, T, S) (S: the cached keys too), before any mask."""
        B, T, _ = x.shape
        i = self.i
        q = self.wq_b(q_latent).view(B, T, i.heads, i.head_dim)
        k = self.k_norm(self.wk(x))  # (B, T, di)
        if self.rotary is not None:
            if positions is None:
                positions = torch.arange(T)
            q = self.rotary(q.transpose(1, 2), positions).transpose(1, 2)
            k = self.rotary(k.unsqueeze(1), positions)[:, 0]
        if cache is not None:  # decoding: the keys of every earlier position are cached
            k = torch.cat([cache["index_k"], k], dim=1) if "index_k" in cache else k
            cache["index_k"] = k
        S = k.shape[1]
        scores = torch.matmul(q.reshape(B, T * i.heads, i.head_dim), k.transpose(1, 2))  # (B, T*Hi, S)
        scores = F.relu(scores * i.head_dim ** -0.5)
        w = self.weights_proj(x) * i.heads ** -0.5  # (B, T, Hi)
        return torch.matmul(w.unsqueeze(2), scores.view(B, T, i.heads, S)).squeeze(2)  # (B, T, S)

    def forward(self, x, q_latent, mask, causal, cache=None, positions=None):
        B, T, _ = x.shape
        i = self.i
        scores = self.scores(x, q_latent, positions, cache)
        S = scores.shape[-1]
        base = mask if mask is not None else (_causal_mask(T, x.dtype) if causal else None)
        if base is not None:  # (T, S); per packed row (B, 1, T, S); per head (H, T, S): what any head sees
            base = base if base.dim() == 2 else base[:, 0] if base.dim() == 4 else base.amax(dim=0)
            scores = scores + base
        keep = scores.topk(min(i.top_k, S), dim=-1).indices
        sparse = torch.full((B, T, S), float("-inf"), dtype=x.dtype).scatter(-1, keep, 0.0)
        if base is not None:
            sparse = sparse + base
        return sparse.unsqueeze(1)  # (B, 1, T, S): every head reads the same keys


def _causal_mask(T: int, dtype) -> torch.Tensor:
    q, key = torch.arange(T)[:, None], torch.arange(T)[None, :]
    return torch.zeros(T, T, dtype=dtype).masked_fill(key > q, float("-inf"))


def causal_conv(x: torch.Tensor, conv: nn.Conv1d, cache: dict = None, resets: torch.Tensor = None) -> torch.Tensor:
    """A depthwise causal convolution over time: ``x`` (B, T, C) -> (B, T, C), each position mixing itself
    and the ``kernel - 1`` before it. Padded on the left only, so the counter sees 2 FLOPs per tap, channel
    and position -- T positions, no more. With a decoding ``cache``, the padding is the last ``kernel - 1``
    inputs of earlier steps (``cache["conv"]``, updated). With ``resets`` (B, T; True where a packed sequence
    starts) each sequence is convolved alone, padded on its own left: the same FLOPs."""
    k = conv.kernel_size[0]
    h = x.transpose(1, 2)
    if cache is None and resets is not None and bool(resets[:, 1:].any()):
        out = torch.empty_like(h)
        for b in range(h.shape[0]):
            starts = [0, *(int(t) for t in resets[b, 1:].nonzero()[:, 0] + 1), h.shape[-1]]
            for s0, s1 in zip(starts, starts[1:]):
                out[b:b + 1, :, s0:s1] = conv(F.pad(h[b:b + 1, :, s0:s1], (k - 1, 0)))
        return out.transpose(1, 2)
    if cache is None:
        return conv(F.pad(h, (k - 1, 0))).transpose(1, 2)
    past = cache.get("conv", h.new_zeros(h.shape[0], h.shape[1], k - 1))
    h = torch.cat([past, h], dim=-1)
    cache["conv"] = h[..., h.shape[-1] - (k - 1):]
    return conv(h).transpose(1, 2)


class GatedDeltaNet(nn.Module):
    """A gated DeltaNet layer (:class:`~whatruns.spec.LinearAttention`), in recurrent form: token by
    token, each value head reads its dk x dv state S at the key (S^T k), writes the correction
    beta * (v - S^T k) along k, decays S by exp(g), and answers the query (S^T q). Each of the three
    is a matmul: 6*dk*dv FLOPs per head and token, whatever the position (chapter "What serving costs").
    Queries and keys are L2-normalised as the FLA kernels do (x / sqrt(sum x^2 + 1e-6)), the queries then
    scaled by dk^-1/2; the output is RMS-normalised per value head (the model's eps), times silu(z)."""

    def __init__(self, D: int, m: LinearAttention, eps: float = 1e-6):
        super().__init__()
        self.m = m
        H, Hk, dk, dv = m.heads, m.key_heads, m.key_dim, m.value_dim
        self.in_proj_qkvz = nn.Linear(D, 2 * Hk * dk + 2 * H * dv, bias=False)
        self.in_proj_ba = nn.Linear(D, 2 * H, bias=False)
        C = m.conv_channels
        self.conv1d = nn.Conv1d(C, C, m.conv, groups=C, bias=False)
        self.dt_bias = nn.Parameter(torch.ones(H))
        self.A_log = nn.Parameter(torch.zeros(H))
        self.norm = nn.RMSNorm(dv, eps=eps)
        self.out_proj = nn.Linear(H * dv, D, bias=False)

    def forward(self, x, state=None, resets=None, cache=None):
        m = self.m
        B, T, _ = x.shape
        H, Hk, dk, dv = m.heads, m.key_heads, m.key_dim, m.value_dim
        q, k, v, z = self.in_proj_qkvz(x).split([Hk * dk, Hk * dk, H * dv, H * dv], dim=-1)
        b, a = self.in_proj_ba(x).split([H, H], dim=-1)
        q, k, v = activate(m.activation, causal_conv(torch.cat([q, k, v], dim=-1), self.conv1d, cache, resets)).split(
            [Hk * dk, Hk * dk, H * dv], dim=-1)
        if cache is not None and "state" in cache:
            state = cache["state"]
        rep = H // Hk
        q = _unit(q.view(B, T, Hk, dk)).repeat_interleave(rep, dim=2) * dk ** -0.5
        k = _unit(k.view(B, T, Hk, dk)).repeat_interleave(rep, dim=2)
        v = v.view(B, T, H, dv)
        beta = torch.sigmoid(b)  # (B, T, H)
        g = -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias)  # log decay per head and token
        S = x.new_zeros(B, H, dk, dv) if state is None else state
        out = []
        for t in range(T):
            if resets is not None and t:  # a packed sequence starts: its state starts empty
                S = S * (~resets[:, t]).to(x.dtype)[:, None, None, None]
            S = S * g[:, t].exp().to(x.dtype)[..., None, None]
            kt, qt = k[:, t].unsqueeze(-1), q[:, t].unsqueeze(-1)  # (B, H, dk, 1)
            held = torch.matmul(S.transpose(-1, -2), kt).squeeze(-1)  # (B, H, dv): what S holds at k
            delta = (v[:, t] - held) * beta[:, t, :, None]
            S = S + torch.matmul(kt, delta.unsqueeze(-2))  # write along k
            out.append(torch.matmul(S.transpose(-1, -2), qt).squeeze(-1))
        if cache is not None:
            cache["state"] = S
        y = torch.stack(out, dim=1)  # (B, T, H, dv)
        y = self.norm(y) * F.silu(z.view(B, T, H, dv))
        return self.out_proj(y.reshape(B, T, H * dv))


def _unit(x, eps: float = 1e-6):
    """x / sqrt(sum(x^2) + eps) over the last dim (the FLA library's l2norm, which transformers follows)."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


class Mamba2Mixer(nn.Module):
    """A Mamba-2 mixer (:class:`~whatruns.spec.Mamba2`), in recurrent form: token by token, each head's
    head_dim x N state decays by exp(dt * A) and adds dt * x outer B, and the output reads it with C,
    plus the skip D * x. Two matmuls per head and token: 4*I*N FLOPs, flat in T. The step sizes are
    softplus(dt + dt_bias), clamped to at least the spec's ``dt_min``; the output is gated by silu(z), then
    RMS-normalised per group (the model's eps)."""

    def __init__(self, D: int, m: Mamba2, eps: float = 1e-6):
        super().__init__()
        self.m, self.eps = m, eps
        I, G, N, H = m.inner, m.groups, m.state, m.heads
        self.in_proj = nn.Linear(D, 2 * I + 2 * G * N + H, bias=m.bias)
        C = m.conv_channels
        self.conv1d = nn.Conv1d(C, C, m.conv, groups=C, bias=m.conv_bias)
        self.dt_bias = nn.Parameter(torch.ones(H))
        self.A_log = nn.Parameter(torch.zeros(H))
        self.D = nn.Parameter(torch.ones(H))
        self.norm_weight = nn.Parameter(torch.ones(I))  # the gated RMSNorm, over each group of I/G channels
        self.out_proj = nn.Linear(I, D, bias=m.bias)

    def forward(self, x, state=None, resets=None, cache=None):
        m = self.m
        B, T, _ = x.shape
        I, G, N, H, P = m.inner, m.groups, m.state, m.heads, m.head_dim
        z, xbc, dt = self.in_proj(x).split([I, I + 2 * G * N, H], dim=-1)
        xs, Bm, Cm = activate(m.activation, causal_conv(xbc, self.conv1d, cache, resets)).split(
            [I, G * N, G * N], dim=-1)
        if cache is not None and "state" in cache:
            state = cache["state"]
        xs = xs.view(B, T, H, P)
        rep = H // G
        Bm = Bm.view(B, T, G, N).repeat_interleave(rep, dim=2)  # (B, T, H, N)
        Cm = Cm.view(B, T, G, N).repeat_interleave(rep, dim=2)
        dt = F.softplus(dt + self.dt_bias)  # (B, T, H)
        if m.dt_min:
            dt = dt.clamp(min=m.dt_min)
        A = -self.A_log.float().exp()
        h = x.new_zeros(B, H, P, N) if state is None else state
        out = []
        for t in range(T):
            if resets is not None and t:
                h = h * (~resets[:, t]).to(x.dtype)[:, None, None, None]
            h = h * (dt[:, t] * A).exp().to(x.dtype)[..., None, None]
            h = h + torch.matmul((dt[:, t, :, None] * xs[:, t]).unsqueeze(-1), Bm[:, t].unsqueeze(-2))
            out.append(torch.matmul(h, Cm[:, t].unsqueeze(-1)).squeeze(-1) + self.D[:, None] * xs[:, t])
        if cache is not None:
            cache["state"] = h
        y = torch.stack(out, dim=1).reshape(B, T, I) * F.silu(z)
        y = y.view(B, T, G, I // G)
        y = (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)).reshape(B, T, I) * self.norm_weight
        return self.out_proj(y)


# ---------------------------------------------------------------------------------------------
# mixture of experts

class Experts(nn.Module):
    """E expert FFNs, their weights 3-D parameters in ``nn.Linear``'s orientation (and Hugging Face's):
    ``up[e]`` is expert e's (F, D) matrix, applied as ``F.linear(x, up[e])``. In memory each is laid out
    (E, in, out) -- ``up[e].t()`` is contiguous -- so that an expert's product reads its weight row by row
    (at the tens of rows an expert gets, 8-18% faster than the (E, out, in) layout on a 2-core Xeon,
    chapter 7); a gated FFN's ``gate`` and ``up`` share one block, (E, D, 2F), each input's gate outputs
    then its up outputs, so that without gradients one product computes both (:meth:`gate_up`), as
    transformers' fused ``gate_up_proj`` does. :meth:`lay_out` makes the layout; ``load_state_dict`` and
    optimizers keep it, and ``.to()``, a deep copy or unpickling make it again."""

    def __init__(self, E: int, D: int, f: FFN):
        super().__init__()
        self.act, self.clamp, F_ = f.activation, f.clamp, f.width

        def weight(n_in, n_out):
            # drawn in (E, in, out) order, the layout the book's recorded runs were made with, so that
            # a seed gives the same experts; shaped (E, out, in) as a view of that memory
            return nn.Parameter((torch.randn(E, n_in, n_out) * 0.02).transpose(1, 2))

        self.gate = weight(D, F_) if f.gated else None
        self.up, self.down = weight(D, F_), weight(F_, D)
        self.gate_bias = nn.Parameter(torch.zeros(E, F_)) if f.gated and f.bias else None
        self.up_bias = nn.Parameter(torch.zeros(E, F_)) if f.bias else None
        self.down_bias = nn.Parameter(torch.zeros(E, D)) if f.bias else None
        self.lay_out()

    @torch.no_grad()
    def lay_out(self) -> None:
        """Lay the weights out as the fast paths read them (the values and shapes unchanged): each matrix
        (E, in, out) in memory, ``gate`` and ``up`` side by side in one (E, D, 2F) block."""
        for W in (self.down,) if self.gate is not None else (self.up, self.down):
            if not W[0].t().is_contiguous() or W.stride(0) != W[0].numel():
                W.data = W.transpose(1, 2).contiguous().transpose(1, 2)
        if self.gate is not None and self.gate_up() is None:
            E, F_, D = self.up.shape
            both = self.up.new_empty(E, D, 2 * F_)
            both[:, :, :F_] = self.gate.transpose(1, 2)
            both[:, :, F_:] = self.up.transpose(1, 2)
            self.gate.data, self.up.data = both[:, :, :F_].transpose(1, 2), both[:, :, F_:].transpose(1, 2)

    def gate_up(self):
        """``gate`` and ``up`` as one (E, D, 2F) tensor, a view of their shared memory (no copy, no autograd):
        ``x @ gate_up()[e]`` is ``[x @ gate[e].T, x @ up[e].T]``. None if they are not laid out so."""
        g, u = self.gate, self.up
        if g is None or g.dtype != u.dtype or g.device != u.device:
            return None
        E, F_, D = g.shape
        if not (g.stride() == u.stride() == (2 * F_ * D, 1, 2 * F_) and u.storage_offset() == g.storage_offset() + F_
                and g.untyped_storage().data_ptr() == u.untyped_storage().data_ptr()):
            return None
        return g.detach().as_strided((E, D, 2 * F_), (2 * F_ * D, 2 * F_, 1), g.storage_offset())

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self.lay_out()
        return out

    def __setstate__(self, state):  # a deep copy or an unpickled module: laid out again
        super().__setstate__(state)
        self.lay_out()

    def run(self, x, matmul, pick):
        """The experts on rows ``x``: ``matmul(x, W)`` multiplies by the (E, out, in) weight
        ``W`` the strategy's way, ``pick(b)`` gives each row its expert's bias."""

        def linear(h, w, b):
            h = matmul(h, w)
            return h if b is None else h + pick(b)

        up = linear(x, self.up, self.up_bias)
        h = activate(self.act, linear(x, self.gate, self.gate_bias), up, self.clamp) if self.gate is not None \
            else activate(self.act, up, clamp=self.clamp)
        return linear(h, self.down, self.down_bias)

    def one(self, e: int, x):
        """Expert ``e`` alone on its rows ``x``."""
        return self.run(x, lambda h, W: F.linear(h, W[e]), lambda b: b[e])


def _bmm(h, W):
    """A batched product by (E, out, in) weights: ``h`` is (E, rows, in)."""
    return torch.bmm(h, W.transpose(1, 2))


class MoELayer(nn.Module):
    """A routed FFN: each token goes to ``top_k`` of E experts, plus any shared expert.

    ``strategy`` (``"auto"``, or one of :data:`STRATEGIES` and :data:`SPEED_STRATEGIES`) changes how the
    experts are computed, not what:

    * ``"auto"`` picks one of the next two per call (:func:`auto_strategy`): ``"threads"`` on CPU,
      ``"grouped_mm"`` under a FLOP counter, a trace or autocast, or on another device;
    * ``"grouped_mm"`` sorts the routed (token, expert) rows by expert and runs each weight
      matrix as one ``torch._grouped_mm``: k*N rows of matmul work;
    * ``"threads"`` gathers the routed rows by expert and deals whole experts out to torch's threads from
      one queue, busiest first, each expert's matmuls on one thread, instead of splitting every small matmul
      over all of them; it has its own backward (an autograd function of its own), whose expert products are dealt
      out the same way: the loop's work and numbers, forward and backward (under a FLOP counter, autocast or
      a trace, and off CPU, it runs as ``"loop"``);
    * ``"loop"`` gathers each expert's tokens, multiplies, and scatter-adds back: the same work, each product
      split over all threads, autograd's backward;
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

    def __init__(self, D: int, m: MoE, strategy: str, capacity_factor: float = None, eps: float = 1e-6):
        super().__init__()
        self.m, self.strategy, self.eps = m, strategy, eps
        self.capacity_factor = capacity_factor if capacity_factor is not None else m.capacity_factor
        self.router = nn.Linear(D, m.experts, bias=m.router_bias)
        if m.router_scale:  # Gemma 4: the router reads a scaled, normalised input; each expert has a scale
            self.router_input_scale = nn.Parameter(torch.ones(D))
            self.per_expert_scale = nn.Parameter(torch.ones(m.experts))
        # DeepSeek-V3's selection bias, set outside gradient descent: a parameter or a buffer, as the spec says
        if m.score_bias and getattr(m, "score_bias_buffer", False):
            self.register_buffer("score_bias", torch.zeros(m.experts))
        else:
            self.score_bias = nn.Parameter(torch.zeros(m.experts), requires_grad=False) if m.score_bias else None
        De = m.latent or D  # the width the experts work in
        self.latent_in = nn.Linear(D, m.latent, bias=m.latent_bias) if m.latent else None
        self.latent_out = nn.Linear(m.latent, D, bias=m.latent_bias) if m.latent else None
        self.experts = Experts(m.experts, De, m.expert)
        self.shared = FeedForward(D, m.shared) if m.shared is not None else None
        self.shared_gate = nn.Linear(D, 1, bias=False) if m.shared_gate else None
        if strategy == "grouped_mm" and not _grouped_mm_works(De, m.expert.width):
            warnings.warn(f"torch._grouped_mm cannot run D={De}, F={m.expert.width} here (on CPU it needs "
                          "rows of a multiple of 16 bytes); this layer uses the 'loop' strategy")
            self.strategy = "loop"
        self.aux_loss = self.load = self.dropped = None

    def route(self, x):
        """Each token's k experts ``idx`` (N, k), their weights ``w`` (N, k), and every expert's
        probability ``p`` (N, E) for the balance loss."""
        m = self.m
        if m.router_scale:
            xr = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.router_input_scale \
                * x.shape[-1] ** -0.5
            logits = self.router(xr)
        else:
            logits = self.router(x)
        if m.router == "sparsemixer":
            return _sparsemixer(logits, m.router_eps)
        sigmoid = m.router in ("sigmoid_topk", "topk_sigmoid")
        scores = torch.sigmoid(logits) if sigmoid else logits.softmax(dim=-1)
        choose = scores if self.score_bias is None else scores + self.score_bias  # selection only
        if m.groups > 1:  # group-limited: the best group_top_k groups first (DeepSeek-V2/V3, GLM-4.5)
            choose = _limit_groups(choose, m.groups, m.group_top_k, best=2 if sigmoid else 1)
        idx = choose.topk(m.top_k, dim=-1).indices
        if m.router == "topk_softmax":
            w = logits.gather(1, idx).softmax(dim=-1)
        else:
            w = scores.gather(1, idx)
            if m.router == "sigmoid_topk" and m.renormalize:
                w = w / w.sum(dim=-1, keepdim=True)
        if m.router_scale:
            w = w * self.per_expert_scale[idx]
        if m.routed_scale != 1.0:
            w = w * m.routed_scale
        p = scores / scores.sum(dim=-1, keepdim=True) if sigmoid else scores
        return idx, w, p

    def forward(self, x, segments=None, route_from=None, shared: bool = True):
        """The layer on ``x`` (..., D). ``segments``: which sequence each token belongs to (the shape of x
        without D; default: each row of a (B, T, D) input is one), for an ``expert_capacity`` counted per
        sequence. ``route_from``: what the router reads, if not x (Gemma 4: the layer's input, the experts
        reading its norm). ``shared=False``: the routed experts' sum alone, without the shared expert."""
        if x.is_meta:
            return self._on_meta(x)
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        N, E, k = x.shape[0], self.m.experts, self.m.top_k
        idx, w, p = self.route(x if route_from is None else route_from.reshape(-1, shape[-1]))
        load = torch.bincount(idx.reshape(-1), minlength=E)
        self.load = load
        self.aux_loss = E * ((load.to(p.dtype) / (N * k)) * p.mean(dim=0)).sum()
        # the routed (token, expert) choices, first choices of all tokens first
        expert, token, weight = idx.t().reshape(-1), torch.arange(N).repeat(k), w.t().reshape(-1)
        slot = _rank_within(expert, load)  # a choice's place in its expert's queue
        cap = math.ceil(self.capacity_factor * N * k / E) if self.capacity_factor is not None else None
        keep = torch.ones_like(expert, dtype=torch.bool)
        if cap is not None:
            keep &= slot < cap
        if self.m.expert_capacity:  # Switch: per sequence, an expert takes its first expert_capacity tokens
            if segments is None:
                seq = torch.arange(math.prod(shape[:-2]) if len(shape) > 2 else 1).repeat_interleave(
                    shape[-2] if len(shape) > 2 else N)
            else:  # numbered within each row: made distinct across rows
                seq = (segments + torch.arange(segments.shape[0])[:, None] * (segments.shape[-1] + 1)).reshape(-1)
            keep &= _rank_by_token(seq[token] * E + expert, token) < self.m.expert_capacity
        self.dropped = int((~keep).sum())
        if self.dropped:
            expert, token, weight, slot = expert[keep], token[keep], weight[keep], slot[keep]
        xe = self.latent_in(x) if self.latent_in is not None else x  # what the experts read
        strategy = auto_strategy(xe, len(expert) / E) if self.strategy == AUTO else self.strategy
        if strategy == "grouped_mm" and not _grouped_mm_works(xe.shape[1], self.m.expert.width, x.dtype):
            strategy = "loop"  # e.g. float64, which torch._grouped_mm has no kernel for
        y = getattr(self, "_" + strategy)(xe, expert, token, weight, slot, cap)
        if self.latent_out is not None:
            y = self.latent_out(y)
        if self.shared is not None and shared:
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
        rows = (self.latent_in(x) if self.latent_in is not None else x).repeat(k, 1)
        if q:
            self.experts.run(rows[:q * E].reshape(E, q, -1), _bmm, lambda b: b[:, None])
        if r:
            self.experts.run(rows[q * E:].reshape(r, 1, -1), lambda h, W: _bmm(h, W[:r]), lambda b: b[:r, None])
        self.aux_loss = self.load = None
        self.dropped = 0
        y = torch.zeros_like(x)
        if self.latent_out is not None:
            y = self.latent_out(rows[:N])
        if self.shared is not None:
            s = self.shared(x)
            y = y + (torch.sigmoid(self.shared_gate(x)) * s if self.shared_gate is not None else s)
        return y.view(shape)

    def _loop(self, x, expert, token, weight, slot, cap):
        # one sort; then each expert's choices are a slice, and experts no token chose are skipped
        # (at small batches most are: the loop then reads only the experts the batch reached)
        order = expert.argsort(stable=True)
        token, weight = token[order], weight[order, None]
        into = self.m.weight_input
        counts = torch.bincount(expert, minlength=self.m.experts).tolist()
        starts = [0]
        for n in counts:
            starts.append(starts[-1] + n)
        out = x.new_empty(len(token), x.shape[1])
        for e, n in enumerate(counts):
            if not n:
                continue
            s, t = starts[e], starts[e + 1]
            if into:  # Llama 4: the weight scales what the expert reads
                out[s:t] = self.experts.one(e, x.index_select(0, token[s:t]) * weight[s:t])
            else:
                out[s:t] = self.experts.one(e, x.index_select(0, token[s:t])) * weight[s:t]
        return torch.zeros_like(x).index_add_(0, token, out)

    def _threads(self, x, expert, token, weight, slot, cap):
        if not _threads_see_the_state(x):
            return self._loop(x, expert, token, weight, slot, cap)
        order = expert.argsort(stable=True)
        token, weight = token[order], weight[order]
        ex = self.experts
        plan = _Plan(torch.bincount(expert, minlength=self.m.experts).tolist(), ex.act, ex.clamp,
                     self.m.weight_input)
        weights = (ex.gate, ex.up, ex.down, ex.gate_bias, ex.up_bias, ex.down_bias)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight) + weights):
            rows = x.index_select(0, token)  # the routed rows, by expert (autograd scatters their gradient back)
            out = _DealtOutExperts.apply(plan, rows, weight, *weights)
        else:
            out = _experts_infer(plan, x, token, weight, *weights, both=self._fused())
        return torch.zeros_like(x).index_add_(0, token, out)

    def _fused(self):
        """The experts' gate and up as one block (:meth:`Experts.gate_up`) where a product may read them as one:
        without biases, and with nothing asking for their gradients; else None."""
        ex = self.experts
        if ex.gate is None or ex.gate_bias is not None or ex.up_bias is not None:
            return None
        if torch.is_grad_enabled() and (ex.gate.requires_grad or ex.up.requires_grad):
            return None
        return ex.gate_up()

    def _grouped_mm(self, x, expert, token, weight, slot, cap):
        order = expert.argsort(stable=True)
        expert, token, weight = expert[order], token[order], weight[order]
        offs = torch.bincount(expert, minlength=self.m.experts).cumsum(0).to(torch.int32)
        rows = x[token] * weight[:, None] if self.m.weight_input else x[token]
        grouped = (lambda h, W: torch._grouped_mm(h, W.transpose(1, 2), offs=offs))
        both, ex = self._fused(), self.experts
        if both is not None:  # gate and up in one grouped product, as transformers' fused gate_up_proj
            F_ = ex.up.shape[1]
            h = torch._grouped_mm(rows, both, offs=offs)
            h = activate(ex.act, h[:, :F_], h[:, F_:], ex.clamp)
            out = grouped(h, ex.down)
            out = out if ex.down_bias is None else out + ex.down_bias[expert]
        else:
            out = self.experts.run(rows, grouped, lambda b: b[expert])
        return torch.zeros_like(x).index_add_(0, token, out if self.m.weight_input else out * weight[:, None])

    def _dense(self, x, expert, token, weight, slot, cap):
        E = self.m.experts
        gates = torch.zeros(E, x.shape[0], dtype=x.dtype).index_put_((expert, token), weight)
        if self.m.weight_input:  # every expert reads every token, scaled by its weight (0 if not chosen)
            return self.experts.run(x[None] * gates[..., None], _bmm, lambda b: b[:, None]).sum(dim=0)
        out = self.experts.run(x.expand(E, -1, -1), _bmm, lambda b: b[:, None])  # (E, N, D)
        return (out * gates[..., None]).sum(dim=0)  # elementwise: the counter sees only the bmm's

    def _gather(self, x, expert, token, weight, slot, cap):
        C = cap if cap is not None else int(self.load.max())
        buffers = x.new_zeros(self.m.experts, C, x.shape[1])
        into = self.m.weight_input
        buffers[expert, slot] = x[token] * weight[:, None] if into else x[token]  # expert e's tokens, zeros after
        out = self.experts.run(buffers, _bmm, lambda b: b[:, None])  # (E, C, D): one bmm per matrix
        return torch.zeros_like(x).index_add_(0, token, out[expert, slot] * (1 if into else weight[:, None]))

    def _onehot(self, x, expert, token, weight, slot, cap):
        E, N = self.m.experts, x.shape[0]
        C = cap if cap is not None else int(self.load.max())
        into = self.m.weight_input
        dispatch = torch.zeros(N, E, C, dtype=x.dtype).index_put_((token, expert, slot),
                                                                  weight if into else torch.ones_like(weight))
        combine = torch.zeros(N, E, C, dtype=x.dtype).index_put_((token, expert, slot),
                                                                 torch.ones_like(weight) if into else weight)
        buffers = torch.einsum("nec,nd->ecd", dispatch, x)  # a matmul that only moves rows
        out = self.experts.run(buffers, _bmm, lambda b: b[:, None])  # (E, C, D), padding too
        return torch.einsum("nec,ecd->nd", combine, out)


def _limit_groups(choose: torch.Tensor, groups: int, keep: int, best: int) -> torch.Tensor:
    """Scores with every expert outside each token's ``keep`` best groups set to -inf; a group's score is the
    sum of its ``best`` highest scores (2 for DeepSeek-V3's sigmoid router, 1 -- the max -- for V2's)."""
    N, E = choose.shape
    if E % groups:
        raise ValueError(f"{E} experts do not split into {groups} groups")
    grouped = choose.view(N, groups, E // groups)
    score = grouped.topk(min(best, E // groups), dim=-1).values.sum(dim=-1)
    mask = torch.zeros(N, groups, dtype=torch.bool).scatter(1, score.topk(keep, dim=-1).indices, True)
    return choose.masked_fill(~mask[..., None].expand(N, groups, E // groups).reshape(N, E), float("-inf"))


def _sparsemixer(logits: torch.Tensor, eps: float = 0.01):
    """PhiMoE's router at inference (sparsemixer): the best expert, weighted by a softmax over the logits
    within a relative distance 2*eps of its logit; then, with it masked out, the best of the rest, the same
    way. Returns (idx, w, p) like :meth:`MoELayer.route`, p the plain softmax."""
    idx, w, masked = [], [], logits
    for _ in range(2):
        top = masked.max(dim=-1, keepdim=True)
        far = (top.values - logits) / logits.abs().clamp(min=top.values) > 2 * eps  # (0 / 0 is not far)
        weights = masked.masked_fill(far, float("-inf")).softmax(dim=-1)
        idx.append(top.indices)
        w.append(weights.gather(1, top.indices))
        masked = masked.scatter(1, top.indices, float("-inf"))
    return torch.cat(idx, dim=1), torch.cat(w, dim=1), logits.softmax(dim=-1)


def _threads_see_the_state(x: torch.Tensor) -> bool:
    """Whether the experts may run on threads of their own (``"threads"``; ``"auto"`` picks it then): on CPU,
    and with no per-thread state the worker threads would not see -- autocast, a dispatch or function mode
    such as the FLOP counter (each is local to the thread), a jit trace or torch.compile. Gradients are no
    obstacle: :class:`_DealtOutExperts` is an autograd function of its own, whose forward and backward run
    their expert products on the threads with autograd off."""
    return (x.device.type == "cpu" and not torch.is_autocast_enabled("cpu") and not is_in_torch_dispatch_mode()
            and not torch._C._is_torch_function_mode_enabled() and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling())


class _Plan:
    """What :class:`_DealtOutExperts` needs besides tensors: the routed rows per expert (sorted by expert),
    the experts' activation, clamp, and whether the routing weight scales the input (Llama 4)."""

    def __init__(self, counts, act, clamp, into):
        self.counts, self.act, self.clamp, self.into = counts, act, clamp, into
        self.starts = [0]
        for n in counts:
            self.starts.append(self.starts[-1] + n)
        self.chosen = [e for e, n in enumerate(counts) if n]


def _linear(h, W, b, e, out=None):
    """Rows ``h`` through expert ``e``'s matrix ``W[e]`` (and bias ``b[e]``): ``F.linear``'s own call, so the
    loop's numbers exactly."""
    if b is None:
        return torch.mm(h, W[e].t(), out=out)
    return torch.addmm(b[e], h, W[e].t(), out=out)


def _pre_activations(e, xs, gate, up, gate_bias, up_bias, both=None):
    """Expert ``e``'s gate and up pre-activations of rows ``xs`` (gate's None for a plain FFN): one product where
    the two share a block (``both``, :meth:`Experts.gate_up`), else two, as the loop."""
    if both is not None:
        ab = torch.mm(xs, both[e])
        return ab[:, :up.shape[1]], ab[:, up.shape[1]:]
    return (_linear(xs, gate, gate_bias, e) if gate is not None else None), _linear(xs, up, up_bias, e)


def _hidden(plan, a, b):
    """The activation of pre-activations ``a`` (gate's, None for a plain FFN) and ``b`` (up's)."""
    return activate(plan.act, a, b, plan.clamp) if a is not None else activate(plan.act, b, clamp=plan.clamp)


def _experts_infer(plan, x, token, w, gate, up, down, gate_bias, up_bias, down_bias, both=None):
    """The ``"threads"`` strategy without gradients: each expert gathers its own rows of ``x`` (``token``, sorted
    by expert) on its thread and runs them through its products into fresh small tensors, which the
    allocator hands back to the next expert while they are still in the core's cache; only the output (S, D),
    each row times its weight ``w``, is one buffer. (Writing every expert's intermediates into buffers of
    all S rows instead ran the experts 5-15% slower on a 2-core Xeon.) With ``both``, gate and up's shared
    block (:meth:`MoELayer._fused`), one product computes both."""
    Y = x.new_empty(token.shape[0], down.shape[1])
    st, into = plan.starts, plan.into

    def work(e):
        s, t = st[e], st[e + 1]
        xs = x.index_select(0, token[s:t])
        if into:
            xs.mul_(w[s:t, None])
        h = _hidden(plan, *_pre_activations(e, xs, gate, up, gate_bias, up_bias, both))
        y = _linear(h, down, down_bias, e, Y[s:t])
        if not into:
            y.mul_(w[s:t, None])

    _deal_out(work, plan.chosen, plan.counts)
    return Y


def _experts_forward(plan, rows, w, gate, up, down, gate_bias, up_bias, down_bias):
    """The ``"threads"`` strategy's forward for training: the routed rows (S, D), sorted by expert, through
    their experts, each output row times its weight ``w`` (S,); the experts dealt out to the threads
    (:func:`_deal_out`). Returns the output and, per expert, what the backward needs: the pre-activations
    and the unweighted output, each expert's own small tensors (as in :func:`_experts_infer`)."""
    out = rows.new_empty(rows.shape[0], down.shape[1])
    st, into = plan.starts, plan.into
    kept = {}

    def work(e):
        s, t = st[e], st[e + 1]
        xs = rows[s:t] * w[s:t, None] if into else rows[s:t]
        a, b = _pre_activations(e, xs, gate, up, gate_bias, up_bias)
        h = _hidden(plan, a, b)
        if into:
            y = _linear(h, down, down_bias, e, out[s:t])
        else:
            y = _linear(h, down, down_bias, e)
            torch.mul(y, w[s:t, None], out=out[s:t])
        kept[e] = (a, b, y)

    _deal_out(work, plan.chosen, plan.counts)
    return out, kept


class _DealtOutExperts(torch.autograd.Function):
    """The ``"threads"`` strategy's experts as one autograd function: forward and backward both deal whole
    experts out to torch's threads (each expert's products on one thread), instead of autograd's backward of
    the loop, which runs every small product over all threads in turn and builds a full-size zero gradient of
    each 3-D weight for every expert it indexes. Inputs: the routed rows (S, D) sorted by expert, their
    weights (S,), the experts' weights and biases (None where absent). Output: the weighted expert outputs
    (S, D). The gradients are the loop's (tests check them against it, and against float64 finite
    differences); a second derivative is not provided."""

    @staticmethod
    def forward(ctx, plan, rows, w, gate, up, down, gate_bias, up_bias, down_bias):
        out, kept = _experts_forward(plan, rows, w, gate, up, down, gate_bias, up_bias, down_bias)
        ctx.plan, ctx.kept = plan, kept  # intermediates, neither inputs nor outputs: kept on ctx
        ctx.save_for_backward(rows, w, gate, up, down, gate_bias, up_bias, down_bias)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        plan = ctx.plan
        rows, w, gate, up, down, gate_bias, up_bias, down_bias = ctx.saved_tensors
        kept = ctx.kept
        need = ctx.needs_input_grad
        grad = grad.contiguous()
        st, into, gated = plan.starts, plan.into, gate is not None
        d_rows = torch.empty_like(rows) if need[1] else None
        d_w = torch.empty_like(w) if need[2] else None

        def weight_grad(p, i):  # unchosen experts get zeros; chosen ones are written whole by their thread
            if p is None or not need[i]:
                return None
            g = _grad_like(p)
            for e, n in enumerate(plan.counts):
                if not n:
                    g[e].zero_()
            return g

        dg, du, dd, dgb, dub, ddb = (weight_grad(p, i) for p, i in
                                     ((gate, 3), (up, 4), (down, 5), (gate_bias, 6), (up_bias, 7), (down_bias, 8)))

        def work(e):
            s, t = st[e], st[e + 1]
            g, ws = grad[s:t], w[s:t, None]
            A, B, Y = kept[e]
            xs = rows[s:t] * ws if into else rows[s:t]
            if into:
                dy = g
            else:
                if d_w is not None:
                    torch.sum(g * Y, dim=1, out=d_w[s:t])
                dy = g * ws
            if ddb is not None:
                torch.sum(dy, dim=0, out=ddb[e])
            with torch.enable_grad():  # the activation's derivative, whatever it is: elementwise, on this thread
                b = B.requires_grad_()
                a = A.requires_grad_() if gated else None
                h = _hidden(plan, a, b)
            if dd is not None:
                torch.mm(dy.t(), h.detach(), out=dd[e])
            dh = torch.mm(dy, down[e])
            pre = (a, b) if gated else (b,)
            d_pre = [torch.zeros_like(p) if d is None else d
                     for p, d in zip(pre, torch.autograd.grad(h, pre, dh, allow_unused=True))]
            da, db = d_pre if gated else (None, d_pre[0])
            if du is not None:
                torch.mm(db.t(), xs, out=du[e])
            if dub is not None:
                torch.sum(db, dim=0, out=dub[e])
            if gated and dg is not None:
                torch.mm(da.t(), xs, out=dg[e])
            if gated and dgb is not None:
                torch.sum(da, dim=0, out=dgb[e])
            if d_rows is not None or (into and d_w is not None):
                dx = torch.mm(db, up[e], out=d_rows[s:t] if d_rows is not None else None)
                if gated:
                    dx.addmm_(da, gate[e])
                if into:
                    if d_w is not None:
                        torch.sum(dx * rows[s:t], dim=1, out=d_w[s:t])
                    dx.mul_(ws)

        _deal_out(work, plan.chosen, plan.counts)
        return None, d_rows, d_w, dg, du, dd, dgb, dub, ddb


_GRAD_MEMORY = torch.utils.weak.WeakIdKeyDictionary()


def _grad_like(p: torch.Tensor) -> torch.Tensor:
    """A tensor to write the gradient of expert weight ``p`` into, shaped and laid out like ``p``: in the memory
    of the last one handed out for ``p`` when nothing else holds that memory any more, else new memory.

    A training loop sets every gradient to None after each step (``zero_grad``'s default), so each backward
    would otherwise write the experts' whole gradient into fresh memory, which the operating system must map
    and zero page by page: on a 2-core Xeon, 402 MB (the benchmark's experts) took 143 ms fresh against 26 ms
    rewritten, a third of what the training step's expert backward costs beyond the dense model's. The memory
    is kept with ``p`` (freed with it): one gradient's worth per expert weight stays allocated between steps.
    Memory still held elsewhere -- ``p.grad`` kept to accumulate into, or a reference the user took -- is
    never written (its count of users shows it): the gradient then goes to new memory, kept in its place.
    :func:`release_gradient_memory` lets go of all of it."""
    kept = _GRAD_MEMORY.get(p)
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if kept is not None and use_count is not None and use_count(kept[1]._cdata) == 1:
        (dtype, device, shape, stride), storage = kept
        if (dtype, device, shape) == (p.dtype, p.device, p.shape):
            return torch.empty(0, dtype=dtype, device=device).set_(storage, 0, shape, stride)
    # autograd keeps a gradient as given only if it has p's strides, where p has memory of its own, else if it is
    # contiguous (gate and up, which share a block)
    own = p.storage_offset() == 0 and p.untyped_storage().nbytes() == p.numel() * p.element_size()
    g = torch.empty_like(p) if own else torch.empty(p.shape, dtype=p.dtype, device=p.device)
    _GRAD_MEMORY[p] = ((g.dtype, g.device, g.shape, g.stride()), g.untyped_storage())
    return g


def release_gradient_memory() -> None:
    """Let go of the memory ``"threads"`` keeps for the experts' next gradients (after training, say, when the
    model only infers): the next backward writes into new memory again."""
    _GRAD_MEMORY.clear()


def _deal_out(work, experts: list, rows: list):
    """Run ``work(e)`` for every expert in ``experts`` on torch's n threads at once: one queue, busiest expert
    first (by ``rows``), each thread taking the next expert as it finishes the last, so a thread slowed by
    another job takes fewer; every expert's products on its thread alone (torch's thread count 1 there, and
    restored afterwards in the calling thread). The calling thread is one of the n; the other n - 1 are
    worker threads kept between calls (:func:`_workers`), so a call does not pay to start threads, nor the
    math library to set up a new thread's buffers. Autograd is off in the workers (inference mode as in
    the caller). With one thread, or one expert, everything runs in the calling thread."""
    n = min(torch.get_num_threads(), len(experts))
    queue = iter(sorted(experts, key=lambda e: -rows[e]))
    if n <= 1:
        with torch.no_grad():
            for e in queue:
                work(e)
        return
    lock, inference, errors, done = threading.Lock(), torch.is_inference_mode_enabled(), [], _queue.SimpleQueue()
    threads_before = torch.get_num_threads()

    def take():
        with lock:
            return next(queue, None)

    def drain():
        while not errors:
            e = take()
            if e is None:
                return
            work(e)

    def job():
        try:
            with torch.inference_mode(inference), torch.no_grad():
                drain()
        except BaseException as error:  # noqa: BLE001 (re-raised in the calling thread)
            errors.append(error)
        finally:
            done.put(None)

    jobs = _workers(n - 1)
    for _ in range(n - 1):
        jobs.put(job)
    try:
        torch.set_num_threads(1)
        with torch.no_grad():
            drain()
    finally:
        for _ in range(n - 1):  # the workers hold this call's tensors until they finish
            done.get()
        torch.set_num_threads(threads_before)
    if errors:
        raise errors[0]


_pool = {"pid": None, "threads": 0, "jobs": None}
_pool_lock = threading.Lock()


def _workers(n: int) -> "_queue.SimpleQueue":
    """The job queue of at least ``n`` kept worker threads (daemons, started on first need, torch's thread
    count 1 in each), which run the jobs :func:`_deal_out` puts on it. A process forked from this one starts
    its own (threads do not survive a fork)."""
    with _pool_lock:
        if _pool["pid"] != os.getpid():
            _pool.update(pid=os.getpid(), threads=0, jobs=_queue.SimpleQueue())
        jobs = _pool["jobs"]
        while _pool["threads"] < n:
            threading.Thread(target=_serve, args=(jobs,), daemon=True,
                             name=f"whatruns-experts-{_pool['threads']}").start()
            _pool["threads"] += 1
        return jobs


def _serve(jobs):
    torch.set_num_threads(1)
    while True:
        jobs.get()()


def _rank_by_token(group, token):
    """For each choice, how many choices of the same ``group`` come from earlier tokens."""
    order = torch.argsort(group * (int(token.max()) + 1 if len(token) else 1) + token, stable=True)
    counts = torch.bincount(group)
    start = counts.cumsum(0) - counts
    rank = torch.empty_like(group)
    rank[order] = torch.arange(len(group)) - start[group[order]]
    return rank


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

class Layer(nn.Module):
    """One layer built from a :class:`~whatruns.spec.Block`, pre-norm: its mixer (``attn`` for attention,
    ``mixer`` for linear attention and Mamba-2), cross-attention (a decoder of an encoder-decoder), then
    its FFN or MoE (``ffn``); with ``post_norms`` each sublayer's output is normalised too (Gemma).

    Gemma 4's MoE layers (a MoE with ``router_scale``, whose ``shared`` FFN is the layer's dense FFN) run
    the two side by side: the dense FFN on the pre-FFN norm, normalised after (``extra_norms[0]``); the
    router on the layer's input itself, the experts on a second pre-norm (``extra_norms[2]``), normalised
    after (``extra_norms[1]``); their sum through the post-FFN norm into the residual. With the model's
    ``layer_scalar``, the layer's output is times a learned scalar (a buffer)."""

    def __init__(self, s: Transformer, b: Block, rotary: bool, strategy: str, capacity_factor):
        super().__init__()
        D, P = s.width, s.per_layer_input
        eps = 1e-6 if s.norm.eps is None else s.norm.eps
        self.block = b
        ffns = [f for f in (b.ffn, getattr(b.ffn, "shared", None)) if isinstance(f, FFN)]
        self.act = ffns[-1].activation if ffns else "gelu_tanh"
        if P:  # Gemma 4's per-layer input: gate D -> P, times this layer's input, projected back, normed
            self.per_layer_gate = nn.Linear(D, P, bias=False)
            self.per_layer_projection = nn.Linear(P, D, bias=False)
            self.per_layer_norm = make_norm(s.norm, D)

        def norm():
            return make_norm(s.norm, D)

        self.attn = self.mixer = self.cross = self.ffn = None
        self.residual_scale, self.post_norm = s.residual_scale, s.post_norm
        if isinstance(b.mixer, Attention):
            self.attn_norm, self.attn = norm(), SelfAttention(D, b.mixer, rotary, s.norm)
        elif isinstance(b.mixer, LinearAttention):
            self.mixer_norm, self.mixer = norm(), GatedDeltaNet(D, b.mixer, eps)
        elif isinstance(b.mixer, Mamba2):
            self.mixer_norm, self.mixer = norm(), Mamba2Mixer(D, b.mixer, eps)
        if b.cross is not None:
            self.cross_norm, self.cross = norm(), SelfAttention(D, b.cross, rotary, s.norm)
        if isinstance(b.ffn, MoE):
            self.ffn_norm, self.ffn = norm(), MoELayer(D, b.ffn, strategy, capacity_factor, eps)
        elif isinstance(b.ffn, FFN):
            self.ffn_norm, self.ffn = norm(), FeedForward(D, b.ffn)
        self.parallel = isinstance(b.ffn, MoE) and b.ffn.router_scale and b.extra_norms >= 3 and b.post_norms
        self.post = nn.ModuleList(norm() for _ in range(b.sublayers)) if b.post_norms else None
        # norms the spec counts beyond those (a layer whose type builds no mixer keeps its norm): held, unused,
        # but in Gemma 4's MoE layers (see above)
        self.extra_norms = nn.ModuleList(norm() for _ in range(b.extra_norms)) if b.extra_norms else None
        if s.layer_scalar:
            self.register_buffer("layer_scalar", torch.ones(1))
        else:
            self.layer_scalar = None

    def forward(self, x, mask, causal, memory=None, state=None, per_layer=None, positions=None, resets=None,
                cache=None, segments=None, cross_mask=None):
        post = iter(self.post) if self.post is not None else None

        def sublayer(x, norm, f):
            """Pre-norm: x + f(norm(x)) (and a post-norm of f's output, with post_norms); BERT's post-norm:
            norm(x + f(x)). The sublayer's output times the model's residual scale."""
            if self.post_norm:
                return norm(x + self.residual_scale * f(x))
            h = f(norm(x))
            if post is not None:
                h = next(post)(h)
            return x + (h * self.residual_scale if self.residual_scale != 1.0 else h)

        if self.attn is not None:
            x = sublayer(x, self.attn_norm, lambda h: self.attn(h, mask=mask, causal=causal, state=state,
                                                                 positions=positions, cache=cache))
        elif self.mixer is not None:
            x = sublayer(x, self.mixer_norm, lambda h: self.mixer(h, resets=resets, cache=cache))
        if self.cross is not None:
            x = sublayer(x, self.cross_norm, lambda h: self.cross(h, source=memory, mask=cross_mask))
        if self.parallel:  # Gemma 4: the dense FFN and the experts side by side
            post_dense, post_experts, pre_experts = self.extra_norms[:3]
            h = self.ffn_norm(x)
            dense = self.ffn.shared(h)
            if self.ffn.shared_gate is not None:
                dense = torch.sigmoid(self.ffn.shared_gate(h)) * dense
            dense = post_dense(dense)
            experts = post_experts(self.ffn(pre_experts(x), segments=segments, route_from=x, shared=False))
            x = x + next(post)(dense + experts)
        elif isinstance(self.ffn, MoELayer):
            x = sublayer(x, self.ffn_norm, lambda h: self.ffn(h, segments=segments))
        elif self.ffn is not None:
            x = sublayer(x, self.ffn_norm, self.ffn)
        if per_layer is not None:
            x = x + self.per_layer_norm(self.per_layer_projection(activate(self.act, self.per_layer_gate(x))
                                                                  * per_layer))
        if self.layer_scalar is not None:
            x = x * self.layer_scalar
        return x


class Stack(nn.Module):
    """The encoder or the decoder: its layers, run by run; a T5 relative-position bias shared by its
    layers (if ``relative_buckets``); a final norm (unless the spec has none)."""

    def __init__(self, s: Transformer, runs, decoder: bool, strategy, capacity_factor):
        super().__init__()
        self.s, self.decoder = s, decoder
        rotary = not s.positions and not s.relative_buckets
        self.blocks = nn.ModuleList(Layer(s, r.block, rotary, strategy, capacity_factor)
                                    for r in runs for _ in range(r.repeat))
        first = runs[0].block.mixer
        self.relative_bias = nn.Embedding(s.relative_buckets, first.heads) if s.relative_buckets else None
        self.norm = make_norm(s.norm, s.width) if s.final_norm else None

    def masks(self, T, dtype, segments=None, positions=None):
        """Per layer: an additive (H or 1, T, T) mask, or None for plain attention (SDPA's is_causal in a
        decoder). One mask per kind of layer (window, chunk), shared by the layers of that kind. With
        ``segments`` (B, T) -- several sequences packed in one row, numbered -- a query sees only its own
        sequence's keys: (B, 1, T, T) masks; chunks then follow each sequence's ``positions`` (B, T)."""
        bias = None
        if self.relative_bias is not None:
            buckets = relative_buckets(T, T, self.s.relative_buckets, bidirectional=not self.decoder,
                                       max_distance=self.s.relative_max_distance)
            bias = self.relative_bias(buckets).permute(2, 0, 1)  # a lookup: 0 FLOPs
        made, masks = {}, []
        for layer in self.blocks:
            a = layer.attn.a if layer.attn is not None else None
            key = (a.window, a.chunk) if a is not None else None
            if key not in made:
                made[key] = self._mask(T, dtype, bias, *(key or (0, 0)), segments=segments, positions=positions)
            masks.append(made[key])
        return masks

    def _mask(self, T, dtype, bias, window, chunk, segments=None, positions=None):
        if segments is None and not self.decoder and not window and not chunk:
            return bias
        if segments is None and bias is None and not window and not chunk:
            return None  # SDPA's is_causal
        q, key = torch.arange(T)[:, None], torch.arange(T)[None, :]
        allowed = key <= q if self.decoder else torch.ones(T, T, dtype=torch.bool)
        if window:
            allowed &= (q - key).abs() < window
        if chunk and segments is not None and positions is not None and positions.dim() == 2:
            allowed = allowed & (positions[:, :, None] // chunk == positions[:, None, :] // chunk)
        elif chunk:
            allowed &= q // chunk == key // chunk
        if segments is not None:  # (B, T, T): within one packed sequence only
            allowed = allowed & (segments[:, :, None] == segments[:, None, :])
            m = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))[:, None]
        else:
            m = torch.zeros(T, T).masked_fill(~allowed, float("-inf"))
        return (m if bias is None else bias + m).to(dtype)

    def forward(self, x, memory=None, per_layer=None, positions=None, segments=None, cache=None):
        state = {}  # what one layer leaves for later ones: an indexer's choice of keys, keys and values to share
        resets = None if segments is None else torch.cat(
            [torch.ones_like(segments[:, :1], dtype=torch.bool), segments[:, 1:] != segments[:, :-1]], dim=1)
        masks = self.masks(x.shape[1], x.dtype, segments, positions) if cache is None else [None] * len(self.blocks)
        cross_mask = None
        if memory is not None and segments is not None:  # a packed sequence reads its own encoding only
            cross_mask = torch.zeros(segments.shape + segments.shape[-1:], dtype=x.dtype).masked_fill(
                segments[:, :, None] != segments[:, None, :], float("-inf"))[:, None]
        for i, (block, mask) in enumerate(zip(self.blocks, masks)):
            x = block(x, mask, self.decoder, memory, state, per_layer[:, :, i] if per_layer is not None else None,
                      positions, resets, None if cache is None else cache.layers.setdefault(i, {}), segments,
                      cross_mask)
        return self.norm(x) if self.norm is not None else x


class Cache:
    """What incremental decoding keeps between steps, layer by layer (``layers[i]``, a dict of tensors):
    attention's keys and values (``k``, ``v``; MLA's ``latent`` and ``k_rope``; an indexer's ``index_k``)
    with their ``positions``, a recurrent layer's ``state`` and ``conv`` inputs. ``length``: tokens seen.
    :meth:`Cache.nbytes` is what :func:`whatruns.serve.kv_cache_bytes` counts (positions are bookkeeping, not
    cache)."""

    def __init__(self):
        self.length = 0
        self.layers = {}

    def fork(self) -> "Cache":
        """A cache that continues from this one and leaves it as it is: decoding appends to the fork (each step
        stores new tensors, never writes into the old ones, so the tensors are shared, not copied). To time or
        compare several continuations of one prompt."""
        other = Cache()
        other.length = self.length
        other.layers = {i: dict(layer) for i, layer in self.layers.items()}
        return other

    def nbytes(self) -> int:
        """Bytes the cache holds: every tensor but the positions."""
        return sum(t.numel() * t.element_size() for layer in self.layers.values() for name, t in layer.items()
                   if name != "positions")


class TransformerLM(nn.Module):
    """Token ids (B, T) -> logits (B, T, V). An encoder-decoder reads the same ids in both stacks; an
    encoder alone (BERT) reads them once."""

    def __init__(self, s: Transformer, strategy: str = AUTO, capacity_factor: float = None):
        super().__init__()
        self.spec = s
        self.embed = nn.Embedding(s.vocab, s.width)
        self.positions = nn.Embedding(s.positions, s.width) if s.positions else None
        self.token_types = nn.Embedding(s.token_types, s.width) if s.token_types else None
        self.embed_norm = make_norm(s.norm, s.width) if s.embedding_norm else None
        self.encoder = Stack(s, s.encoder, False, strategy, capacity_factor) if s.encoder else None
        self.decoder = Stack(s, s.blocks, True, strategy, capacity_factor) if s.blocks else None
        self.head = None if s.tied else nn.Linear(s.width, s.vocab, bias=False)
        self.head_transform = nn.Linear(s.width, s.width) if s.head_transform else None
        ffns = [r.block.ffn for _, stack in s.stacks for r in stack if isinstance(r.block.ffn, FFN)]
        self._head_act = ffns[0].activation if ffns else "gelu"  # BERT's transform uses its hidden_act
        self.head_norm = make_norm(s.norm, s.width) if s.head_transform else None
        self.head_bias = nn.Parameter(torch.zeros(s.vocab)) if s.head_bias else None
        P = s.per_layer_input
        if P:  # Gemma 4's per-layer embeddings: a table of L x P per token, and a projection of the embedding
            self.per_layer_embed = nn.Embedding(s.per_layer_vocab, s.layers * P)
            self.per_layer_model_projection = nn.Linear(s.width, s.layers * P, bias=False)
            self.per_layer_projection_norm = make_norm(Norm("rmsnorm", eps=s.norm.eps), P)
        for mod in self.modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                nn.init.normal_(mod.weight, std=0.02)
                if getattr(mod, "bias", None) is not None:
                    nn.init.zeros_(mod.bias)

    def forward(self, ids, positions=None, cache: "Cache" = None):
        """Logits for token ids (B, T). ``positions`` (B, T), optional: each token's position; where it falls
        back to 0 a new sequence starts (a padding-free batch: sequences packed in one row, none attending
        across the boundary, rotary and learned positions restarting). ``cache``: decode incrementally -- the
        ids are the next T tokens after the ``cache.length`` already seen, whose keys, values and states the
        :class:`Cache` holds (a prompt first, then a token at a time); the logits equal the full forward's."""
        segments = None
        if cache is not None:
            if positions is not None or self.encoder is not None:
                raise ValueError("incremental decoding takes a decoder alone, positions following the cache")
            positions = torch.arange(cache.length, cache.length + ids.shape[1])
            cache.length += ids.shape[1]
        elif positions is None:
            positions = torch.arange(ids.shape[1])
        else:
            starts = torch.cat([torch.ones_like(positions[:, :1], dtype=torch.bool),
                                positions[:, 1:] <= positions[:, :-1]], dim=1)
            segments = starts.long().cumsum(dim=1)
        x = self.embed(ids)
        if self.spec.embed_scale != 1.0:  # Gemma: sqrt(D), in the embedding's dtype
            x = x * torch.tensor(self.spec.embed_scale, dtype=x.dtype)
        if self.positions is not None:
            # a learned table has no row past its end (checked where there are values: not on the meta device)
            if positions.device.type != "meta" and int(positions.max()) >= self.positions.num_embeddings:
                raise ValueError(f"position {int(positions.max())}, but the position table has "
                                 f"{self.positions.num_embeddings} rows")
            x = x + self.positions(positions)
        if self.token_types is not None:  # every token of type 0
            x = x + self.token_types(torch.zeros_like(ids))
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        per_layer = None
        if self.spec.per_layer_input:
            L, P = self.spec.layers, self.spec.per_layer_input
            projected = self.per_layer_projection_norm(
                (self.per_layer_model_projection(x) * self.spec.width ** -0.5).view(*ids.shape, L, P))
            per_layer = (projected + self.per_layer_embed(ids).view(*ids.shape, L, P) * P ** 0.5) * 2 ** -0.5
        h = self.encoder(x, positions=positions, segments=segments) if self.encoder is not None else None
        if self.decoder is not None:
            h = self.decoder(x, h, per_layer, positions=positions, segments=segments, cache=cache)
        if self.head_transform is not None:
            h = self.head_norm(activate(self._head_act, self.head_transform(h)))
        logits = F.linear(h, self.embed.weight if self.head is None else self.head.weight)
        if self.head_bias is not None:
            logits = logits + self.head_bias
        if self.spec.logit_scale != 1.0:
            logits = logits * self.spec.logit_scale
        if self.spec.logit_softcap:
            logits = torch.tanh(logits / self.spec.logit_softcap) * self.spec.logit_softcap
        return logits

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
