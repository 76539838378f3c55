"""Counting from the spec alone: parameters stored, parameters that run, FLOPs per token.

The conventions (chapter "Counting what runs"):

* **total_params** -- every parameter Hugging Face ``transformers`` instantiates for the config
  (no multi-token-prediction module, no vision tower).
* **active_params** -- the parameters one token's forward pass uses: all of them except the
  routed experts the token is not sent to (E - k per MoE layer) and, of an *untied* input
  embedding (and of a learned position table), every row but the one it reads. The LM head
  always counts fully; a tied embedding is the LM head, so it counts fully too.
* **embedding_params** -- the vocabulary-sized tables: token embedding, position table, and the
  LM head when it is not tied (``breakdown['embedding'] + breakdown['head']``).
* **flops_per_token** -- forward FLOPs per token in a sequence of T tokens, counted as torch's
  ``FlopCounterMode`` counts them: 2 FLOPs per multiply-add, matmul-family ops only (norms,
  activations, softmax, lookups count 0), attention scores and values over all T x T pairs
  (no causal discount). With ``causal=True`` a query only pays for the keys it can see.

For encoder-decoder models the T tokens go through both stacks (the encoder reads the input,
the decoder the targets, both of length T); FLOPs per token are the sum of both stacks' work
divided by T.

For a DLRM-style :class:`~whatruns.spec.EmbeddingModel` one "token" is one example.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Dict

from .spec import (FFN, Attention, Block, EmbeddingModel, LinearAttention, Mamba2, MoE, SpecError, Transformer,
                   _positive)

COMPONENTS = ("embedding", "per_layer_input", "attention", "linear_attention", "ssm", "dense_ffn", "routed_experts",
              "shared_experts", "router", "norms", "head", "mlp", "interaction")

MAX_PARAMS = 10 ** 16
"""More parameters than this (10,000 times the largest published model) describe no model: an input error."""


@dataclass
class Part:
    """One component's parameters (stored and active) and forward FLOPs per token."""

    params: int = 0
    active: float = 0
    flops: float = 0

    def add(self, params=0, active=None, flops=0):
        self.params += params
        self.active += params if active is None else active
        self.flops += flops


@dataclass(frozen=True)
class Count:
    """What :func:`count` returns. ``breakdown`` maps a component to its :class:`Part`."""

    total_params: int
    active_params: int
    embedding_params: int
    flops_per_token: float
    seq_len: int
    breakdown: Dict[str, Part] = field(repr=False)

    @property
    def non_embedding_params(self) -> int:
        return self.total_params - self.embedding_params

    @property
    def active_fraction(self) -> float:
        return self.active_params / self.total_params

    @property
    def training_flops_per_token(self) -> float:
        """Forward plus backward: the backward pass does twice the forward's matmul work."""
        return 3 * self.flops_per_token

    def as_dict(self) -> dict:
        d = {
            "total_params": self.total_params,
            "active_params": self.active_params,
            "embedding_params": self.embedding_params,
            "non_embedding_params": self.non_embedding_params,
            "flops_per_token": self.flops_per_token,
            "training_flops_per_token": self.training_flops_per_token,
            "seq_len": self.seq_len,
        }
        d["breakdown"] = {k: {"params": p.params, "active": p.active, "flops_per_token": p.flops}
                          for k, p in self.breakdown.items()}
        return d


# ---------------------------------------------------------------------------------------------
# the formulas, each by the name the chapters use

def linear_params(d_in: int, d_out: int, bias: bool = False) -> int:
    """Parameters of a Linear layer: d_in x d_out weights, plus d_out biases."""
    return d_in * d_out + (d_out if bias else 0)


def matmul_flops(m: int, k: int, n: int) -> int:
    """FLOPs of an (m x k) @ (k x n) product: one multiply and one add per multiply-add."""
    return 2 * m * k * n


def matmul_bytes(m: int, k: int, n: int, bytes_per_element: int = 4) -> int:
    """Bytes an (m x k) @ (k x n) product moves at the least: both operands read once and the
    result written once, ``bytes_per_element`` each (4 for fp32, 2 for bf16). Chapter
    "Counting what runs" (arithmetic intensity)."""
    return bytes_per_element * (m * k + k * n + m * n)


def arithmetic_intensity(flops: float, nbytes: float) -> float:
    """FLOPs done per byte moved to or from memory, e.g.
    ``arithmetic_intensity(matmul_flops(m, k, n), matmul_bytes(m, k, n))``. An op whose intensity
    is below the machine's FLOP/s divided by its bytes/s is limited by memory, not arithmetic.
    Chapter "Counting what runs"."""
    return flops / nbytes


def roofline(intensity: float, peak_flops: float, bandwidth: float) -> float:
    """The FLOP/s an op of this arithmetic intensity can reach on a machine of ``peak_flops``
    FLOP/s and ``bandwidth`` bytes/s: ``min(peak_flops, intensity * bandwidth)`` (the roofline
    model of Williams et al. 2009). Chapter "Counting what runs"."""
    return min(peak_flops, intensity * bandwidth)


def ffn_params(D: int, ffn: FFN) -> int:
    """Parameters of one FFN of width F on width D: 2 or 3 matrices of D x F, plus biases."""
    if ffn.gated:  # gate and up (D -> F each), down (F -> D)
        return 3 * D * ffn.width + ((2 * ffn.width + D) if ffn.bias else 0)
    return 2 * D * ffn.width + ((ffn.width + D) if ffn.bias else 0)


def ffn_flops(D: int, ffn: FFN) -> int:
    """Forward FLOPs per token of one FFN: 2 per weight of its matrices."""
    return 2 * ffn.matrices * D * ffn.width


def attention_params(D: int, a: Attention) -> int:
    """Parameters of one self-attention layer: projections (an output gate per channel doubles the query
    projection, one per head adds D x H; values taken from the keys drop the value projection; keys and
    values shared from an earlier layer drop both and the key norm), MLA's latents and their norms,
    QK-norm, sinks, and a sparse-attention indexer."""
    H, K, dh, dv = a.heads, a.kv_heads, a.head_dim, a.v_head_dim
    q_out = H * dh * (2 if a.gate == "channel" else 1)
    if a.mla:
        nope = dh - a.rope_head_dim
        if a.q_lora_rank:
            q = linear_params(D, a.q_lora_rank, a.bias) + a.q_lora_rank + linear_params(a.q_lora_rank, q_out)
        else:
            q = linear_params(D, q_out)
        kv = (linear_params(D, a.kv_lora_rank + a.rope_head_dim, a.bias) + a.kv_lora_rank
              + linear_params(a.kv_lora_rank, H * (nope + dv)))
        n = q + kv
    else:
        n = linear_params(D, q_out, a.bias)
        if not a.kv_shared:
            n += linear_params(D, K * dh, a.bias) + (0 if a.values_from_keys else linear_params(D, K * dv, a.bias))
    n += linear_params(H * dv, D, a.out_bias)
    if a.gate == "head":
        n += linear_params(D, H)
    if a.qk_norm == "head":
        n += dh if a.kv_shared else 2 * dh
    elif a.qk_norm == "full":
        n += H * dh if a.kv_shared else (H + K) * dh
    if a.sinks:
        n += H
    if a.indexer is not None:
        n += indexer_params(D, a)
    return n


def indexer_params(D: int, a: Attention) -> int:
    """Parameters of a DeepSeek Sparse Attention indexer: its queries from the query latent
    (q_lora_rank x Hi*di), one key (D x di) with a LayerNorm (weight and bias), a weight per head (D x Hi)."""
    i = a.indexer
    if i.shared:  # reads the keys another layer's indexer picked
        return 0
    return (linear_params(a.q_lora_rank, i.heads * i.head_dim) + linear_params(D, i.head_dim) + 2 * i.head_dim
            + linear_params(D, i.heads))


def attention_projection_flops(D: int, a: Attention) -> int:
    """Forward FLOPs per token of the projections (q, k, v, output, an output gate's; not the scores);
    with an indexer, its projections too."""
    H, K, dh, dv = a.heads, a.kv_heads, a.head_dim, a.v_head_dim
    q_out = H * dh * (2 if a.gate == "channel" else 1)
    if a.mla:
        nope = dh - a.rope_head_dim
        q = 2 * D * q_out if not a.q_lora_rank else 2 * (D * a.q_lora_rank + a.q_lora_rank * q_out)
        kv = 2 * (D * (a.kv_lora_rank + a.rope_head_dim) + a.kv_lora_rank * H * (nope + dv))
        n = q + kv + 2 * H * dv * D
    else:
        kv = 0 if a.kv_shared else K * dh + (0 if a.values_from_keys else K * dv)
        n = 2 * D * (q_out + kv) + 2 * H * dv * D
    if a.gate == "head":
        n += 2 * D * H
    if a.indexer is not None and not a.indexer.shared:
        i = a.indexer
        n += 2 * (a.q_lora_rank * i.heads * i.head_dim + D * i.head_dim + D * i.heads)
    return n


def attention_score_flops(a: Attention, keys: float) -> float:
    """Forward FLOPs per query of scaled-dot-product attention over ``keys`` keys:
    q.k for each key (2*dh each) and the weighted sum of values (2*dv each), per head."""
    return 2 * a.heads * keys * (a.head_dim + a.v_head_dim)


def indexer_score_flops(a: Attention, keys: float) -> float:
    """Forward FLOPs per query of a sparse-attention indexer scoring ``keys`` keys: a dot product of
    di per indexer head and key (2*Hi*di), then the heads' scores weighted and summed (2*Hi)."""
    i = a.indexer
    return 2 * i.heads * keys * (i.head_dim + 1)


def mean_keys(T: int, causal: bool, window: int = 0, chunk: int = 0) -> float:
    """Keys each query attends to, on average over a sequence of T tokens.

    Not causal: all T (what a FLOP counter sees of attention under any mask). Causal: query i sees
    i + 1 keys; with a sliding ``window``, min(i + 1, window); with ``chunk`` s, the keys of its own
    chunk up to itself, (i mod chunk) + 1."""
    if not causal:
        return T
    if window and window < T:  # query i sees min(i + 1, window) keys
        return (window * (window + 1) / 2 + (T - window) * window) / T
    if chunk and chunk < T:
        full, rest = divmod(T, chunk)
        return (full * chunk * (chunk + 1) / 2 + rest * (rest + 1) / 2) / T
    return (T + 1) / 2


def attention_keys(a: Attention, T: int, causal: bool) -> float:
    """Keys one query of this layer reads, on average (:func:`mean_keys`); with a sparse-attention
    indexer and ``causal``, min(i + 1, top_k): the indexer picks top_k of the visible keys."""
    if a.indexer is not None and causal:
        k = a.indexer.top_k
        if k < T:
            return (k * (k + 1) / 2 + (T - k) * k) / T
    return mean_keys(T, causal, a.window, a.chunk)


def attention_flops(D: int, a: Attention, T: int, causal: bool = False) -> float:
    """Forward FLOPs per token of one attention layer in a sequence of T tokens: projections, scores and
    values over :func:`attention_keys` keys, and an indexer's scores over every visible key."""
    n = attention_projection_flops(D, a) + attention_score_flops(a, attention_keys(a, T, causal))
    if a.indexer is not None and not a.indexer.shared:
        n += indexer_score_flops(a, mean_keys(T, causal))
    return n


def linear_attention_params(D: int, m: LinearAttention) -> int:
    """Parameters of one gated DeltaNet layer: the input projection to q, k, v and the gate z
    (D x (2*Hk*dk + 2*H*dv)) and to a decay and a write strength per head (D x 2H), the depthwise
    convolution (``conv`` taps per channel of q, k, v; no bias), a step bias and a decay rate per head,
    the gated RMSNorm's dv weights and the output projection (H*dv x D)."""
    H, Hk, dk, dv = m.heads, m.key_heads, m.key_dim, m.value_dim
    return D * (2 * Hk * dk + 2 * H * dv) + D * 2 * H + m.conv_channels * m.conv + 2 * H + dv + H * dv * D


def linear_attention_flops(D: int, m: LinearAttention) -> int:
    """Forward FLOPs per token of one gated DeltaNet layer, in recurrent form: the projections (2 per
    weight), the depthwise convolution (2 per tap and channel), and per value head three products with
    its dk x dv state -- read what it holds for the key, write the correction, read the query's answer:
    6*dk*dv. The same for every token whatever T: no growth with the context."""
    H, Hk, dk, dv = m.heads, m.key_heads, m.key_dim, m.value_dim
    return (2 * D * (2 * Hk * dk + 2 * H * dv + 2 * H) + 2 * m.conv_channels * m.conv + 6 * H * dk * dv
            + 2 * H * dv * D)


def mamba2_params(D: int, m: Mamba2) -> int:
    """Parameters of one Mamba-2 mixer: the input projection (D x (2I + 2GN + H)), the depthwise
    convolution over x, B, C (``conv`` taps per channel, and a bias each if ``conv_bias``), a step bias, a
    decay rate and a skip weight per head, the gated RMSNorm's I weights and the output projection
    (I x D); biases on both projections if ``bias``."""
    I, G, N, H = m.inner, m.groups, m.state, m.heads
    return (linear_params(D, 2 * I + 2 * G * N + H, m.bias) + m.conv_channels * (m.conv + int(m.conv_bias))
            + 3 * H + I + linear_params(I, D, m.bias))


def mamba2_flops(D: int, m: Mamba2) -> int:
    """Forward FLOPs per token of one Mamba-2 mixer, in recurrent form: projections, convolution, and per
    head two products with its head_dim x N state (write x times B, read it with C): 4*I*N. Flat in T."""
    I, G, N, H = m.inner, m.groups, m.state, m.heads
    return 2 * D * (2 * I + 2 * G * N + H) + 2 * m.conv_channels * m.conv + 4 * I * N + 2 * I * D


def mixer_params(D: int, m) -> int:
    """Parameters of one mixer of any kind."""
    if isinstance(m, Attention):
        return attention_params(D, m)
    if isinstance(m, LinearAttention):
        return linear_attention_params(D, m)
    return mamba2_params(D, m)


def mixer_flops(D: int, m, T: int, causal: bool = False) -> float:
    """Forward FLOPs per token of one mixer of any kind in a sequence of T tokens."""
    if isinstance(m, Attention):
        return attention_flops(D, m, T, causal)
    if isinstance(m, LinearAttention):
        return linear_attention_flops(D, m)
    return mamba2_flops(D, m)


MIXER_COMPONENT = {Attention: "attention", LinearAttention: "linear_attention", Mamba2: "ssm"}
"""The breakdown component each mixer kind's parameters and FLOPs go to."""


def router_params(D: int, moe: MoE) -> int:
    """Parameters of one router: a D x E linear layer (plus E biases), and the E per-expert
    score biases when they are parameters (a buffer, ``score_bias_buffer``, counts nothing)."""
    score = moe.experts if (moe.score_bias and not moe.score_bias_buffer) else 0
    scale = (D + moe.experts) if moe.router_scale else 0  # Gemma 4: the input's scale and each expert's
    return linear_params(D, moe.experts, moe.router_bias) + score + scale


def shared_expert_params(D: int, moe: MoE) -> int:
    """Parameters of one layer's shared experts (fused into one FFN) and their sigmoid gate, if any."""
    if moe.shared is None:
        return 0
    return ffn_params(D, moe.shared) + (linear_params(D, 1) if moe.shared_gate else 0)


def shared_expert_flops(D: int, moe: MoE) -> int:
    """Forward FLOPs per token of one layer's shared experts and their gate: they run for every token."""
    if moe.shared is None:
        return 0
    return ffn_flops(D, moe.shared) + (matmul_flops(1, D, 1) if moe.shared_gate else 0)


def latent_params(D: int, moe: MoE) -> int:
    """Parameters of a latent MoE's two projections, D -> latent and latent -> D (0 without a latent)."""
    if not moe.latent:
        return 0
    return linear_params(D, moe.latent, moe.latent_bias) + linear_params(moe.latent, D, moe.latent_bias)


def expert_params(D: int, moe: MoE) -> int:
    """Parameters of one routed expert: an FFN on the model's width, or on the latent width."""
    return ffn_params(moe.latent or D, moe.expert)


def moe_flops(D: int, moe: MoE) -> int:
    """Forward FLOPs per token of one MoE layer: the router (2DE), the k routed experts (and a latent
    MoE's two projections), and the shared experts. Flat in E but for the router: chapter
    "Mixture of experts: most parameters rest"."""
    return (matmul_flops(1, D, moe.experts) + 2 * (latent_params(D, moe) - _latent_biases(D, moe))
            + moe.top_k * ffn_flops(moe.latent or D, moe.expert) + shared_expert_flops(D, moe))


def _latent_biases(D: int, moe: MoE) -> int:
    return (moe.latent + D) if moe.latent and moe.latent_bias else 0


# ---------------------------------------------------------------------------------------------
# routing: capacity, dropped choices, experts reached, one-hot dispatch
# (chapter "Mixture of experts: most parameters rest")

def expert_capacity(tokens: int, experts: int, top_k: int, capacity_factor: float) -> int:
    """Rows each expert takes when ``tokens`` tokens each choose ``top_k`` of ``experts`` experts
    under a capacity factor cf: C = ceil(cf * N * k / E) (GShard, Switch). cf = 1 is exactly the
    fair share; :class:`whatruns.nn.MoELayer` drops the choices beyond C."""
    return math.ceil(capacity_factor * tokens * top_k / experts)


def expected_dropped_fraction(tokens: int, experts: int, top_k: int, capacity_factor: float) -> float:
    """The expected fraction of the N*k routing choices dropped at capacity
    C = :func:`expert_capacity` when routing is uniform (each token picks k of the E experts at
    random). An expert's load X is then Binomial(N, k/E) and it drops (X - C)+, so the fraction is
    E * E[(X - C)+] / (N * k). A trained, balanced router drops less; a skewed one more."""
    N, E, k = tokens, experts, top_k
    C = expert_capacity(N, E, k, capacity_factor)
    if k == E:  # every token goes to every expert
        return max(0, N - C) / N
    p = k / E
    lp, lq, lnf = math.log(p), math.log1p(-p), math.lgamma(N + 1)
    excess = sum((x - C) * math.exp(lnf - math.lgamma(x + 1) - math.lgamma(N - x + 1) + x * lp + (N - x) * lq)
                 for x in range(C + 1, N + 1))
    return E * excess / (N * k)


def experts_touched(experts: int, top_k: int, tokens: int) -> float:
    """Expected number of distinct experts that ``tokens`` tokens reach in one MoE layer when each
    picks ``top_k`` of ``experts`` uniformly at random: E * (1 - (1 - k/E)^n). One token reaches k;
    a batch soon reaches all E (the parameters a step updates, or the expert weights it reads)."""
    return experts * (1 - (1 - top_k / experts) ** tokens)


def onehot_dispatch_flops(tokens: int, experts: int, capacity: int, D: int) -> int:
    """FLOPs a counter sees for one one-hot dispatch (or combine) einsum of a GShard-style MoE
    layer: a 0/1 (N x E*C) matrix times the (N x D) tokens, 2 * N * E * C * D, although it only
    copies rows into (or out of) the E expert buffers of C rows each."""
    return matmul_flops(experts * capacity, tokens, D)


# ---------------------------------------------------------------------------------------------

def count(spec, seq_len: int = 2048, causal: bool = False) -> Count:
    """Count a spec: total, active and embedding parameters, and forward FLOPs per token
    for a sequence of ``seq_len`` tokens. See the module docstring for the conventions."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len <= 0:
        raise SpecError(f"seq_len must be a positive integer, got {seq_len!r}")
    _positive("count", "seq_len", seq_len)
    if isinstance(spec, Transformer):
        c = _count_transformer(spec, seq_len, causal)
    elif isinstance(spec, EmbeddingModel):
        c = _count_embedding_model(spec, seq_len)
    else:
        raise SpecError(f"cannot count a {type(spec).__name__}; expected a Transformer or an EmbeddingModel")
    if c.total_params > MAX_PARAMS:
        raise SpecError(f"the model would store {c.total_params:.3g} parameters, beyond the bound {MAX_PARAMS:.0e} "
                        "(10,000 times the largest published model): check its sizes")
    return c


def block_parts(D: int, block: Block, norm_params: int, T: int, causal: bool) -> Dict[str, Part]:
    """One layer's parameters (stored and active) and forward FLOPs per token, by component: its mixer
    (under :data:`MIXER_COMPONENT`), cross-attention, FFN or MoE (router, routed and shared experts) and
    its norms. ``causal``: whether its queries see only earlier keys (a decoder layer, counted causally)."""
    parts: Dict[str, Part] = {}

    def add(name, params=0, active=None, flops=0):
        parts.setdefault(name, Part()).add(params, active, flops)

    m = block.mixer
    if m is not None:
        add(MIXER_COMPONENT[type(m)], mixer_params(D, m), flops=mixer_flops(D, m, T, causal))
    if block.cross is not None:  # every query sees all T encoder positions
        add("attention", attention_params(D, block.cross), flops=attention_flops(D, block.cross.shape, T, False))
    f = block.ffn
    if isinstance(f, FFN):
        add("dense_ffn", ffn_params(D, f), flops=ffn_flops(D, f))
    elif isinstance(f, MoE):
        add("router", router_params(D, f), flops=matmul_flops(1, D, f.experts))
        one = expert_params(D, f)
        add("routed_experts", f.experts * one + latent_params(D, f), active=f.top_k * one + latent_params(D, f),
            flops=f.top_k * ffn_flops(f.latent or D, f.expert) + 2 * (latent_params(D, f) - _latent_biases(D, f)))
        add("shared_experts", shared_expert_params(D, f), flops=shared_expert_flops(D, f))
    add("norms", block.norms * norm_params)
    return parts


def _count_transformer(s: Transformer, T: int, causal: bool) -> Count:
    D = s.width
    parts = {k: Part() for k in ("embedding", "attention", "linear_attention", "ssm", "dense_ffn",
                                 "routed_experts", "shared_experts", "router", "norms", "head")}
    norm = s.norm.params(D)
    emb_rows = s.vocab * D
    if s.tied:
        parts["embedding"].add(emb_rows)  # read as the LM head too: every row runs
    else:
        parts["embedding"].add(emb_rows, active=D)
        parts["head"].add(emb_rows)
    parts["head"].add(s.vocab if s.head_bias else 0, flops=matmul_flops(1, D, s.vocab))
    if s.head_transform:  # BERT: dense D x D with bias, then a norm, before the vocabulary
        parts["head"].add(linear_params(D, D, bias=True) + norm, flops=matmul_flops(1, D, D))
    for rows in (s.positions, s.token_types):
        if rows:
            parts["embedding"].add(rows * D, active=D)
    if s.embedding_norm:
        parts["norms"].add(norm)
    tables = parts["embedding"].params + (0 if s.tied else emb_rows)  # the vocabulary-sized tables so far
    if s.per_layer_input:  # Gemma 4: a table of L*P per token (one row read), projected from the embedding too
        LP, P = s.layers * s.per_layer_input, s.per_layer_input
        parts["embedding"].add(s.per_layer_vocab * LP, active=LP)
        tables += s.per_layer_vocab * LP
        ple = parts.setdefault("per_layer_input", Part())
        ple.add(linear_params(D, LP) + P, flops=matmul_flops(1, D, LP))
        # and in every layer: a gate D -> P and a projection P -> D, and a norm of D
        ple.add(s.layers * 2 * D * P, flops=s.layers * 4 * D * P)
        parts["norms"].add(s.layers * norm)
    for name, stack in s.stacks:
        if s.relative_buckets:  # one (buckets x H) table per stack, in its first layer
            first = stack[0].block.mixer
            parts["attention"].add(s.relative_buckets * first.heads)
        if s.final_norm:
            parts["norms"].add(norm)
        for run in stack:
            for k, p in block_parts(D, run.block, norm, T, causal and name == "decoder").items():
                parts.setdefault(k, Part()).add(p.params * run.repeat, p.active * run.repeat, p.flops * run.repeat)
    return _finish(parts, T, embedding_params=tables)


def _finish(parts: Dict[str, Part], T: int, embedding_params: int = None) -> Count:
    total = sum(p.params for p in parts.values())
    active = sum(p.active for p in parts.values())
    flops = sum(p.flops for p in parts.values())
    for p in parts.values():
        p.active = _exact(p.active)
        p.flops = _exact(p.flops)
    return Count(total_params=total, active_params=_exact(active),
                 embedding_params=parts["embedding"].params if embedding_params is None else embedding_params,
                 flops_per_token=_exact(flops), seq_len=T, breakdown=parts)


def _exact(x):
    """Keep integers integers (so that counts compare exactly); fractional only when they are."""
    return int(x) if float(x).is_integer() else x


def _count_embedding_model(s: EmbeddingModel, T: int) -> Count:
    parts = {k: Part() for k in ("embedding", "mlp", "interaction")}
    for t in s.tables:
        parts["embedding"].add(t.rows * t.dim, active=min(t.pooling, t.rows) * t.dim)
    widths = [s.dense_features, *s.bottom_mlp]
    top = [s.interaction_width, *s.top_mlp]
    for mlp in (widths, top):
        for d_in, d_out in zip(mlp, mlp[1:]):
            parts["mlp"].add(linear_params(d_in, d_out, bias=True), flops=matmul_flops(1, d_in, d_out))
    if s.interaction == "dot":
        n = len(s.tables) + 1  # a batched (n x dim) @ (dim x n) product per example
        parts["interaction"].flops += matmul_flops(n, s.dim, n)
    return _finish(parts, T)


def rows_read(spec: EmbeddingModel) -> int:
    """Embedding rows one example reads: the sum of the tables' pooling factors."""
    return sum(min(t.pooling, t.rows) for t in spec.tables)


ACTIVE_CONVENTIONS = ("one_row", "whole_table", "non_embedding")
"""How publishers count the embedding tables in "active" parameters (see :func:`active_params_as`)."""


def active_params_as(c: Count, convention: str = "one_row") -> int:
    """Active parameters per token of a counted model (``c = count(spec)``) under one of
    :data:`ACTIVE_CONVENTIONS`, which differ only in the vocabulary-sized tables:

    * ``"one_row"`` -- this library's ``active_params``: of an untied input embedding (and a
      position table) only the row a token reads; the LM head in full (gpt-oss's convention).
    * ``"whole_table"`` -- the whole input embedding (and position table) counted as active, as
      if a lookup ran every row; the LM head in full (Mixtral's 12.9B, Llama 4's 17B).
    * ``"non_embedding"`` -- neither the input embedding nor the LM head (Kaplan et al.'s
      non-embedding N; a tied embedding, being the head, is left out too).

    For a recommendation model (:class:`~whatruns.spec.EmbeddingModel`) ``"whole_table"`` is every
    parameter. Chapter "Embeddings: billions of parameters, a handful of rows".
    """
    emb, head = c.breakdown["embedding"], c.breakdown.get("head", Part())
    if convention == "one_row":
        return c.active_params
    if convention == "whole_table":
        return _exact(c.active_params - emb.active + emb.params)
    if convention == "non_embedding":
        return _exact(c.active_params - emb.active - head.active)
    raise SpecError(f"convention must be one of {', '.join(ACTIVE_CONVENTIONS)}, got {convention!r}")


def encoder_decoder_flops(spec: Transformer, input_len: int, target_len: int, causal: bool = True) -> Dict[str, float]:
    """Forward FLOPs of one sequence pair through an encoder-decoder (T5, Switch): ``input_len`` tokens
    through the encoder, ``target_len`` through the decoder (self-attention over the targets, causal by
    default; cross-attention over all the inputs). Returns the parts, so a convention can pick them:
    ``{"encoder", "decoder", "router", "head"}`` -- the two stacks' matmuls (attention scores included,
    routers not), the routers of both stacks, the LM head on the targets.

    With ``input_len == target_len == T`` and ``causal=False`` the parts add up to
    ``count(spec, T).flops_per_token * T``. Chapter "Real models, counted" uses this to reproduce the
    Switch Transformer's Table 9, whose "FLOPs per sequence" is encoder + decoder for T5's 512 input and
    114 target tokens."""
    if not isinstance(spec, Transformer) or not spec.encoder_decoder:
        raise SpecError("encoder_decoder_flops needs an encoder-decoder Transformer (encoder_layers > 0)")
    for name, n in (("input_len", input_len), ("target_len", target_len)):
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise SpecError(f"{name} must be a positive integer, got {n!r}")
    D = spec.width
    parts = {"encoder": 0, "decoder": 0, "router": 0, "head": matmul_flops(target_len, D, spec.vocab)}
    for name, stack in spec.stacks:
        T = input_len if name == "encoder" else target_len
        for run in stack:
            b = run.block
            p = block_parts(D, replace(b, cross=None), 0, T, causal and name == "decoder")
            per_token = sum(x.flops for k, x in p.items() if k != "router")
            if b.cross is not None:  # every target position reads all the inputs
                per_token += attention_projection_flops(D, b.cross) + attention_score_flops(b.cross, input_len)
            parts[name] += run.repeat * T * per_token
            parts["router"] += run.repeat * T * p["router"].flops if "router" in p else 0
    return {k: _exact(v) for k, v in parts.items()}
