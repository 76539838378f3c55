"""What a model is: sizes and structure, layer by layer, validated on construction.

Everything else in :mod:`whatruns` reads a spec: :func:`whatruns.count` counts it,
:func:`whatruns.build` turns it into a torch module, :func:`whatruns.load` makes one
from a Hugging Face ``config.json``.

Notation (the book's, see the introduction): V vocabulary, D width, L layers,
H query heads, K key/value heads, F FFN width, E routed experts, k top-k, S shared experts.

Two kinds of model are described:

* :class:`Transformer` -- a stack of layers (a decoder, an encoder, or both: T5 / Switch). Each layer
  is a :class:`Block`: a **mixer** that moves information between positions (:class:`Attention` --
  full, sliding-window or chunked, MHA / GQA / MLA, with or without a sparse-attention
  :class:`Indexer` --, :class:`LinearAttention` or :class:`Mamba2`) and an **FFN** that works on each
  position alone (a dense :class:`FFN` or a :class:`MoE`); either may be absent (Nemotron-H's layers have
  one or the other). A stack is stored as :class:`Run` s of identical blocks, so a model of 10,000 equal
  layers is one run: nothing that reads a spec does work per layer.
* :class:`EmbeddingModel` -- a recommendation model (DLRM): many embedding tables, a
  pooling factor per table, and small MLPs.

A homogeneous stack can be written in one line, ``Transformer(vocab=V, width=D, layers=L,
attention=Attention(...), ffn=FFN(...))``, optionally with ``moe=MoE(...), moe_layers=[...]`` and
``sliding_window=W, sliding_layers=[...]``; a heterogeneous one with ``blocks=[Run(Block(...), n), ...]``.
Both give the same object: ``.blocks`` is what is stored, and ``.attention``, ``.ffn``, ``.moe``,
``.moe_layers``, ``.sliding_layers`` read it back.

Sizes are bounded (:data:`BOUNDS`): a size larger than any model anyone could build is an input
error, not a model, and is refused with one line naming the field and the bound.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Iterable, Optional, Tuple, Union


class SpecError(ValueError):
    """A spec (or a config it came from) that cannot describe a real model.

    The message is one line, fit to print to a user as it is.
    """


BOUNDS = {
    "vocab": 2 ** 32,  # rows of a token embedding (the largest LM vocabularies are ~2^18)
    "rows": 2 ** 40,  # rows of one recommendation-model table (production tables reach ~2^33)
    "width": 2 ** 20,  # D and every other feature size (heads x head size, FFN widths, ranks)
    "layers": 2 ** 16,  # layers of one stack (the deepest published models have ~2^7)
    "heads": 2 ** 16,
    "experts": 2 ** 24,  # routed experts of one layer (PEER's 'million experts' are 2^20)
    "positions": 2 ** 32,  # rows of a position table, windows, chunks, token-type rows, buckets
    "repeat": 2 ** 16,
}
"""The largest value each kind of size may take. Far above any published model (the comments say how far),
and far below the sizes that make arithmetic on them meaningless."""

_FIELD_BOUND = {  # field name -> kind of bound; any other size is bounded as a width
    "vocab": "vocab", "rows": "rows", "layers": "layers", "encoder_layers": "layers", "repeat": "repeat",
    "heads": "heads", "kv_heads": "heads", "key_heads": "heads", "groups": "heads", "index_heads": "heads",
    "experts": "experts", "top_k": "experts", "shared_experts": "experts",
    "positions": "positions", "window": "positions", "chunk": "positions", "token_types": "positions",
    "relative_buckets": "positions", "index_top_k": "positions", "pooling": "positions", "seq_len": "positions",
}


def _positive(owner: str, name: str, value, zero_ok: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{owner}: {name} must be an integer, got {value!r}")
    if value < 0 or (value == 0 and not zero_ok):
        raise SpecError(f"{owner}: {name} must be {'non-negative' if zero_ok else 'positive'}, got {value}")
    kind = _FIELD_BOUND.get(name.split()[-1], "width")
    if value > BOUNDS[kind]:
        raise SpecError(f"{owner}: {name} {_short(value)} is beyond the bound {BOUNDS[kind]:,} "
                        f"for a {kind if kind != 'width' else 'width or size'}: no model is that large")


def _short(value: int) -> str:
    """A number for an error message: in full when short, else its digit count (a 5,000-digit number is
    not printed)."""
    text = str(value)
    return text if len(text) <= 24 else f"of {len(text)} digits"


def _flag(owner: str, name: str, value) -> None:
    if not isinstance(value, bool):
        raise SpecError(f"{owner}: {name} must be true or false, got {value!r}")


def _choice(owner: str, name: str, value, options) -> None:
    if value not in options:
        raise SpecError(f"{owner}: {name} must be one of {', '.join(map(repr, options))}, got {value!r}")


def _layer_set(owner: str, name: str, value, layers: int) -> Tuple[int, ...]:
    try:
        items = tuple(value)
    except TypeError:
        raise SpecError(f"{owner}: {name} must be a list of layer indices, got {value!r}") from None
    for i in items:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < layers:
            raise SpecError(f"{owner}: {name} has {i!r}, not a layer index in 0..{layers - 1}")
    if len(set(items)) != len(items):
        raise SpecError(f"{owner}: {name} lists a layer twice")
    return tuple(sorted(items))


class _Part:
    """What every spec part has: ``with_`` (a validated copy with some fields changed)."""

    def with_(self, **changes):
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


@dataclass(frozen=True)
class Norm(_Part):
    """A normalisation layer: RMSNorm (a weight of D) or LayerNorm (weight, and bias if ``bias``)."""

    kind: str = "rmsnorm"
    bias: bool = False
    eps: Optional[float] = None  # the function, not the count (None: 1e-6 for RMSNorm, 1e-5 for LayerNorm)
    offset: bool = False  # weights applied as (1 + w): Gemma 2/3, Qwen3-Next

    def __post_init__(self):
        _choice("Norm", "kind", self.kind, ("rmsnorm", "layernorm"))
        _flag("Norm", "bias", self.bias)
        _flag("Norm", "offset", self.offset)
        _number("Norm", "eps", self.eps, none_ok=True)
        if self.kind == "rmsnorm" and self.bias:
            raise SpecError("Norm: an RMSNorm has no bias")

    def params(self, width: int) -> int:
        """Parameters of one norm over ``width`` features."""
        return width * (2 if self.bias else 1)


DTYPES = ("float32", "bfloat16", "float16", "float8_e4m3fn", "float8_e5m2")


@dataclass(frozen=True)
class Storage(_Part):
    """How a checkpoint stores the weights: ``dtype``, the type of the tensors it does not quantize
    (``torch_dtype`` / ``dtype`` of a config; ``None`` when the config does not say), and
    ``quantization``, its ``quantization_config`` as canonical JSON text ("" for none). Counting ignores
    it; :func:`whatruns.serve.weight_bytes` reads it (and refuses schemes it does not know)."""

    dtype: Optional[str] = None
    quantization: str = ""

    def __post_init__(self):
        if self.dtype is not None:
            _choice("Storage", "dtype", self.dtype, DTYPES)
        if not isinstance(self.quantization, str):
            raise SpecError("Storage: quantization must be JSON text")

    @classmethod
    def of(cls, dtype: Optional[str] = None, quantization: Optional[dict] = None) -> "Storage":
        """A Storage from a dtype name and a quantization_config dict (or None)."""
        import json
        return cls(dtype, json.dumps(quantization, sort_keys=True) if quantization else "")

    @property
    def quantization_config(self) -> Optional[dict]:
        import json
        return json.loads(self.quantization) if self.quantization else None


# ---------------------------------------------------------------------------------------------
# what changes the function but no count: positions, scales

ROPE_SCALINGS = ("default", "linear", "dynamic", "yarn", "llama3", "longrope", "proportional")


def _number(owner: str, name: str, value, positive: bool = True, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value in (float("inf"),
                                                                                                  float("-inf")):
        raise SpecError(f"{owner}: {name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise SpecError(f"{owner}: {name} must be positive, got {value!r}")


@dataclass(frozen=True)
class Rope(_Part):
    """Rotary position embedding of one attention layer: no parameter, no FLOP counted (elementwise), but
    the function a model computes. Frequencies theta^(-2j/dim) over the first ``dim`` features of each
    head (0: all of them; a partial rotary factor f gives int(f * head_dim)), the two halves rotated against
    each other, or neighbouring pairs when ``interleaved`` (DeepSeek's MLA). ``scaling`` stretches them
    for long contexts as Hugging Face's rope types do: ``linear`` and ``dynamic`` (NTK) by ``factor``,
    ``yarn`` (``beta_fast``, ``beta_slow``, ``mscale``, ``mscale_all_dim``, ``attention_factor``),
    ``llama3`` (``low_freq_factor``, ``high_freq_factor``), ``longrope`` (``short_factor`` /
    ``long_factor`` per frequency), ``proportional`` (Gemma 4: frequencies of the first ``dim`` features
    over the whole head). ``original_positions``: the pretraining context the scaling starts from;
    ``max_positions``: the context it was scaled to."""

    theta: float = 10000.0
    dim: int = 0
    interleaved: bool = False
    scaling: str = "default"
    factor: float = 1.0
    original_positions: int = 0
    max_positions: int = 0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 0.0
    mscale_all_dim: float = 0.0
    attention_factor: Optional[float] = None
    truncate: bool = True
    short_factor: Tuple[float, ...] = ()
    long_factor: Tuple[float, ...] = ()
    short_mscale: Optional[float] = None  # PhiMoE's longrope: cos and sin times short_mscale, or long_mscale past
    long_mscale: Optional[float] = None  # original_positions; its frequencies stay the short ones (as transformers')

    def __post_init__(self):
        o = "Rope"
        _number(o, "theta", self.theta)
        _positive(o, "dim", self.dim, zero_ok=True)
        _flag(o, "interleaved", self.interleaved)
        _flag(o, "truncate", self.truncate)
        _choice(o, "scaling", self.scaling, ROPE_SCALINGS)
        for name in ("factor", "low_freq_factor", "high_freq_factor"):
            _number(o, name, getattr(self, name))
        for name in ("beta_fast", "beta_slow", "mscale", "mscale_all_dim"):
            _number(o, name, getattr(self, name), positive=False)
        _number(o, "attention_factor", self.attention_factor, none_ok=True)
        _number(o, "short_mscale", self.short_mscale, none_ok=True)
        _number(o, "long_mscale", self.long_mscale, none_ok=True)
        for name in ("original_positions", "max_positions"):
            _positive(o, name, getattr(self, name), zero_ok=True)
        for name in ("short_factor", "long_factor"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
            for v in getattr(self, name):
                _number(o, name, v)
        if self.dim % 2:
            raise SpecError(f"{o}: dim must be even (features rotate in pairs), got {self.dim}")
        if self.scaling in ("yarn", "llama3", "longrope") and not self.original_positions:
            raise SpecError(f"{o}: {self.scaling} scaling needs original_positions")


# ---------------------------------------------------------------------------------------------
# mixers: what moves information between positions

ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu", "relu2", "swiglu_oai")

@dataclass(frozen=True)
class Indexer(_Part):
    """The lightning indexer of DeepSeek Sparse Attention (DeepSeek-V3.2, GLM-5): a small multi-head
    scorer (``heads`` heads of ``head_dim``, its queries from the MLA query latent, one shared key of
    ``head_dim`` with a LayerNorm, a per-head weight from the input) that picks, for each query, the
    ``top_k`` keys the attention then reads. Needs MLA with a query latent (``q_lora_rank > 0``).
    ``shared``: the layer has no indexer of its own and reads the keys the last indexer picked (GLM-5.2's
    shared layers): no parameters, no scoring work, the same ``top_k`` keys per query.
    The function: the first ``rope_head_dim`` features of the indexer's queries and key are rotated by the
    attention's rope -- as two halves (DeepSeek-V3.2), or neighbouring pairs when ``interleaved`` (GLM-5) --
    and the scores scaled by head_dim^-1/2 before the ReLU."""

    heads: int
    head_dim: int
    top_k: int
    shared: bool = False
    interleaved: bool = False  # the function, not the count

    def __post_init__(self):
        _positive("Indexer", "index_heads", self.heads)
        _positive("Indexer", "head_dim", self.head_dim)
        _positive("Indexer", "index_top_k", self.top_k)
        _flag("Indexer", "shared", self.shared)
        _flag("Indexer", "interleaved", self.interleaved)


@dataclass(frozen=True)
class Attention(_Part):
    """Softmax self-attention of one layer.

    MHA when ``kv_heads == heads``, GQA when fewer (MQA at 1), MLA (DeepSeek-V2/V3) when
    ``kv_lora_rank > 0``. ``head_dim`` is the size of a query/key head (for MLA: the no-position part
    plus ``rope_head_dim``); ``v_head_dim`` the size of a value head (default ``head_dim``).

    Which keys a query sees: all earlier ones (``window = chunk = 0``), the last ``window`` (sliding
    window: Mistral, gpt-oss, Gemma), or those of its own block of ``chunk`` tokens (Llama 4's chunked
    layers). Neither changes a parameter; both change FLOPs (:func:`whatruns.count.mean_keys`).
    """

    heads: int
    kv_heads: int
    head_dim: int
    v_head_dim: Optional[int] = None
    bias: bool = False  # bias on the q, k, v projections (MLA: on the down-projections)
    out_bias: bool = False  # bias on the output projection
    qk_norm: Optional[str] = None  # "head": RMSNorm weights of head_dim on q and on k (Qwen3, Gemma 3);
    # "full": over all heads, H*head_dim on q and K*head_dim on k (OLMoE, MiniMax-M2); None: no QK-norm
    sinks: bool = False  # one learned attention-sink logit per head (gpt-oss)
    gate: Optional[str] = None  # a sigmoid output gate: "channel", per query channel from a q projection twice as
    # wide (Qwen3-Next); "head", one per head from its own D x H projection (Step 3)
    values_from_keys: bool = False  # no value projection: the values are the key projection (Gemma 4's full layers)
    kv_shared: bool = False  # no key/value projections: reads an earlier layer's keys and values (Gemma 4)
    q_lora_rank: int = 0  # MLA: rank of the query compression (0: no compression)
    kv_lora_rank: int = 0  # MLA: rank of the key/value latent (0: not MLA)
    rope_head_dim: int = 0  # MLA: the decoupled rotary part of head_dim, shared across heads
    indexer: Optional[Indexer] = None  # MLA with DeepSeek Sparse Attention
    window: int = 0  # sliding window: keys a query sees (0: no window)
    chunk: int = 0  # chunked attention: tokens per chunk (0: no chunks)
    # the function, not the count
    rope: Optional[Rope] = Rope()  # None: no rotary embedding (learned or relative positions, or none: NoPE)
    scale: Optional[float] = None  # softmax scale (None: 1/sqrt(head_dim); T5: 1; Gemma: query_pre_attn_scalar^-1/2)
    softcap: float = 0.0  # scores capped as c*tanh(s/c) before the softmax (Gemma 2); 0: none
    qk_l2norm: bool = False  # q and k scaled to unit length (RMS, the norm's eps), no weight (Llama 4)
    v_norm: bool = False  # each value head RMS-normalised, no weight (Gemma 4)
    value_scale: float = 1.0  # the values multiplied by this (MiMo-V2-Flash)
    clip_qkv: float = 0.0  # q, k, v clamped to [-c, c] (DBRX, OLMoE); 0: none
    temperature: float = 0.0  # Llama 4's attention-temperature tuning (its NoPE layers): the query at position p
    # times 1 + temperature * log(1 + floor((p + 1) / temperature_floor)); 0: none
    temperature_floor: int = 8192

    kind = "attention"

    def __post_init__(self):
        o = "Attention"
        _positive(o, "heads", self.heads)
        _positive(o, "kv_heads", self.kv_heads)
        _positive(o, "head_dim", self.head_dim)
        if self.v_head_dim is None:
            object.__setattr__(self, "v_head_dim", self.head_dim)
        _positive(o, "v_head_dim", self.v_head_dim)
        for name in ("bias", "out_bias", "sinks", "values_from_keys", "kv_shared"):
            _flag(o, name, getattr(self, name))
        _choice(o, "qk_norm", self.qk_norm, (None, "head", "full"))
        _choice(o, "gate", self.gate, (None, "channel", "head"))
        if self.values_from_keys and self.v_head_dim != self.head_dim:
            raise SpecError(f"{o}: values taken from the keys have the keys' head_dim")
        for name in ("q_lora_rank", "kv_lora_rank", "rope_head_dim", "window", "chunk"):
            _positive(o, name, getattr(self, name), zero_ok=True)
        if self.window and self.chunk:
            raise SpecError(f"{o}: a layer has a sliding window or chunks, not both")
        if self.heads % self.kv_heads:
            raise SpecError(f"{o}: heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")
        if self.mla:
            if self.kv_heads != self.heads:
                raise SpecError(f"{o}: MLA has as many key/value heads as query heads")
            if not 0 < self.rope_head_dim < self.head_dim:
                raise SpecError(f"{o}: MLA's rope_head_dim must be between 0 and head_dim ({self.head_dim})")
        elif self.q_lora_rank or self.rope_head_dim:
            raise SpecError(f"{o}: q_lora_rank and rope_head_dim need MLA (kv_lora_rank > 0)")
        if (self.values_from_keys or self.kv_shared) and self.mla:
            raise SpecError(f"{o}: values_from_keys and kv_shared are not for MLA")
        if self.rope is not None and not isinstance(self.rope, Rope):
            raise SpecError(f"{o}: rope must be a Rope or None")
        if self.rope is not None and self.rope.dim > (self.rope_head_dim if self.mla else self.head_dim):
            raise SpecError(f"{o}: rope.dim ({self.rope.dim}) exceeds the head's rotary part")
        _number(o, "scale", self.scale, none_ok=True)
        _number(o, "softcap", self.softcap, positive=False)
        _number(o, "value_scale", self.value_scale)
        _number(o, "clip_qkv", self.clip_qkv, positive=False)
        _flag(o, "qk_l2norm", self.qk_l2norm)
        _flag(o, "v_norm", self.v_norm)
        _number(o, "temperature", self.temperature, positive=False)
        _positive(o, "temperature_floor", self.temperature_floor)
        if self.indexer is not None:
            if not isinstance(self.indexer, Indexer):
                raise SpecError(f"{o}: indexer must be an Indexer or None")
            if not (self.mla and self.q_lora_rank):
                raise SpecError(f"{o}: a sparse-attention indexer needs MLA with a query latent (q_lora_rank > 0)")

    @property
    def mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def attention_kind(self) -> str:
        """'mla', 'mha', 'gqa' or 'mqa'."""
        if self.mla:
            return "mla"
        return "mha" if self.kv_heads == self.heads else ("mqa" if self.kv_heads == 1 else "gqa")

    @property
    def kv_kind(self) -> tuple:
        """What a layer's keys and values are like -- the keys they cover and their shapes: a layer with
        ``kv_shared`` reads those of the last earlier layer of the same kind."""
        return (self.window, self.chunk, self.kv_heads, self.head_dim, self.v_head_dim)

    @property
    def shape(self) -> "Attention":
        """This attention without its window or chunks: what two layers that differ only in the keys
        they see have in common."""
        return replace(self, window=0, chunk=0) if (self.window or self.chunk) else self


@dataclass(frozen=True)
class LinearAttention(_Part):
    """A gated DeltaNet layer (Qwen3-Next, Qwen3.5): linear attention with a fixed-size state.

    ``heads`` value heads of ``value_dim`` and ``key_heads`` query/key heads of ``key_dim`` (each
    query/key head serves ``heads // key_heads`` value heads). The input is projected to queries,
    keys, values and an output gate z (2·Hk·dk + 2·H·dv) and to a decay and a write strength per value
    head (2·H); queries, keys and values pass a depthwise causal convolution of ``conv`` taps; each
    value head keeps a dk x dv state matrix, read and updated once per token (the delta rule); a gated
    RMSNorm of dv and an output projection follow. Per token the work does not grow with T."""

    heads: int
    key_heads: int
    key_dim: int
    value_dim: int
    conv: int = 4
    activation: str = "silu"  # the function, not the count: after the convolution (the config's hidden_act)

    kind = "linear_attention"

    def __post_init__(self):
        o = "LinearAttention"
        _positive(o, "heads", self.heads)
        _positive(o, "key_heads", self.key_heads)
        _positive(o, "key_dim", self.key_dim)
        _positive(o, "value_dim", self.value_dim)
        _positive(o, "conv", self.conv)
        _choice(o, "activation", self.activation, ACTIVATIONS)
        if self.heads % self.key_heads:
            raise SpecError(f"{o}: heads ({self.heads}) must be a multiple of key_heads ({self.key_heads})")

    @property
    def conv_channels(self) -> int:
        """Channels of the depthwise convolution: queries, keys and values."""
        return 2 * self.key_heads * self.key_dim + self.heads * self.value_dim


@dataclass(frozen=True)
class Mamba2(_Part):
    """A Mamba-2 mixer (Nemotron-H): a selective state-space layer with a fixed-size state.

    The input is projected (D -> 2·I + 2·G·N + H, I = ``heads`` x ``head_dim``) to a gate z, the
    inner stream x, G groups of B and C (``state`` = N each) and a step size per head; x, B and C pass
    a depthwise causal convolution of ``conv`` taps (with a bias if ``conv_bias``); each head keeps a
    head_dim x N state, updated and read once per token; a gated RMSNorm of I (in ``groups``
    groups) and an output projection (I -> D) follow. ``bias``: biases on both projections.
    Per token the work does not grow with T."""

    heads: int
    head_dim: int
    state: int
    groups: int = 1
    conv: int = 4
    conv_bias: bool = True
    bias: bool = False
    dt_min: float = 0.0  # the function, not the count: step sizes clamped to at least this (time_step_min)
    activation: str = "silu"  # after the convolution (mamba_hidden_act)

    kind = "mamba2"

    def __post_init__(self):
        o = "Mamba2"
        for name in ("heads", "head_dim", "state", "groups", "conv"):
            _positive(o, name, getattr(self, name))
        _flag(o, "conv_bias", self.conv_bias)
        _flag(o, "bias", self.bias)
        _number(o, "dt_min", self.dt_min, positive=False)
        _choice(o, "activation", self.activation, ACTIVATIONS)
        if self.inner % self.groups or self.heads % self.groups:
            raise SpecError(f"{o}: heads ({self.heads}) must be a multiple of groups ({self.groups})")

    @property
    def inner(self) -> int:
        """I: the width of the inner stream, heads x head_dim."""
        return self.heads * self.head_dim

    @property
    def conv_channels(self) -> int:
        """Channels of the depthwise convolution: x, B and C."""
        return self.inner + 2 * self.groups * self.state


Mixer = Union[Attention, LinearAttention, Mamba2]
MIXERS = (Attention, LinearAttention, Mamba2)


# ---------------------------------------------------------------------------------------------
# FFNs: what works on each position alone

@dataclass(frozen=True)
class FFN(_Part):
    """A feed-forward network of hidden width F: gated (three matrices: gate, up, down)
    or plain (two: up, down), with or without biases."""

    width: int
    gated: bool = True
    bias: bool = False
    activation: str = "silu"
    clamp: float = 0.0  # the function, not the count: act(gate) clamped to at most c and up to [-c, c] (Step 3.5's
    # swiglu limits); 0: none

    kind = "ffn"

    def __post_init__(self):
        _positive("FFN", "width", self.width)
        _flag("FFN", "gated", self.gated)
        _flag("FFN", "bias", self.bias)
        _choice("FFN", "activation", self.activation, ACTIVATIONS)
        _number("FFN", "clamp", self.clamp, positive=False)

    @property
    def matrices(self) -> int:
        return 3 if self.gated else 2


# softmax_topk: softmax over all experts, keep the top k (Switch, GShard, DeepSeek-V2, Qwen-MoE without renorm)
# topk_softmax: keep the top k logits, softmax over them (Mixtral, Qwen3-MoE, DBRX, gpt-oss)
# sigmoid_topk: sigmoid scores, top k, renormalised (DeepSeek-V3 and its kin)
# topk_sigmoid: top k of the logits, then their sigmoid, not renormalised (Llama 4)
# sparsemixer: PhiMoE's two experts, each weighted by a softmax over the logits near it (top_k must be 2)
ROUTERS = ("softmax_topk", "topk_softmax", "sigmoid_topk", "topk_sigmoid", "sparsemixer")


@dataclass(frozen=True)
class MoE(_Part):
    """A mixture-of-experts FFN: a router sends each token to ``top_k`` of ``experts``
    routed experts (each an :class:`FFN`); optional shared experts run for every token.

    ``shared`` is all the shared experts fused into one FFN, as Hugging Face builds them
    (DeepSeek: width S times the expert width); ``shared_experts`` is S. ``latent`` > 0: the routed
    experts work in a narrower space of that width, entered and left through two projections
    (D -> latent -> D) that every token runs (Nemotron-H's latent MoE).
    """

    experts: int
    top_k: int
    expert: FFN
    shared: Optional[FFN] = None
    shared_experts: int = 0
    shared_gate: bool = False  # a sigmoid gate (D -> 1) on the shared expert (Qwen2-MoE)
    router_bias: bool = False  # bias on the router's linear layer (gpt-oss)
    score_bias: bool = False  # a per-expert bias added to routing scores (DeepSeek-V3)
    # score_bias kept as a buffer, not a parameter (Hugging Face's DeepSeek-V3 e_score_correction_bias):
    # it is set outside gradient descent and counted in no parameter total
    score_bias_buffer: bool = False
    router: str = "softmax_topk"  # how scores are turned into weights; see whatruns.nn
    capacity_factor: Optional[float] = None  # None: dropless
    latent: int = 0  # width the routed experts work in (0: the model's width)
    latent_bias: bool = False  # biases on the two latent projections
    router_scale: bool = False  # a learned scale on the router's input (D) and one per expert (E) (Gemma 4)
    # the function, not the count
    routed_scale: float = 1.0  # the routed experts' sum times this (DeepSeek-V3's routed_scaling_factor)
    groups: int = 1  # group-limited routing: experts in this many groups ...
    group_top_k: int = 1  # ... of which a token may use this many (DeepSeek-V3's n_group, topk_group)
    weight_input: bool = False  # the router's weight scales the expert's input, not its output (Llama 4)
    renormalize: bool = True  # sigmoid_topk: the k weights divided by their sum (DeepSeek's norm_topk_prob)
    router_eps: float = 0.01  # sparsemixer: the relative distance 2*eps within which logits share a softmax
    # (PhiMoE's router_jitter_noise)
    expert_capacity: int = 0  # tokens an expert takes per sequence, the first in order; the rest skip the layer
    # (Switch's expert_capacity); 0: no limit

    kind = "moe"

    def __post_init__(self):
        o = "MoE"
        _positive(o, "experts", self.experts)
        _positive(o, "top_k", self.top_k)
        if self.top_k > self.experts:
            raise SpecError(f"{o}: top_k ({self.top_k}) cannot exceed the number of experts ({self.experts})")
        if not isinstance(self.expert, FFN):
            raise SpecError(f"{o}: expert must be an FFN")
        if self.shared is not None and not isinstance(self.shared, FFN):
            raise SpecError(f"{o}: shared must be an FFN or None")
        _positive(o, "shared_experts", self.shared_experts, zero_ok=True)
        _positive(o, "latent", self.latent, zero_ok=True)
        if (self.shared is None) != (self.shared_experts == 0):
            raise SpecError(f"{o}: give shared (the fused shared FFN) and shared_experts (S) together")
        for name in ("shared_gate", "router_bias", "score_bias", "score_bias_buffer", "latent_bias", "router_scale"):
            _flag(o, name, getattr(self, name))
        if self.score_bias_buffer and not self.score_bias:
            raise SpecError(f"{o}: score_bias_buffer needs score_bias")
        if self.shared_gate and self.shared is None:
            raise SpecError(f"{o}: shared_gate needs a shared expert")
        if self.latent_bias and not self.latent:
            raise SpecError(f"{o}: latent_bias needs a latent width")
        _choice(o, "router", self.router, ROUTERS)
        _number(o, "routed_scale", self.routed_scale)
        _positive(o, "groups", self.groups)
        _positive(o, "group_top_k", self.group_top_k)
        _flag(o, "weight_input", self.weight_input)
        _flag(o, "renormalize", self.renormalize)
        _number(o, "router_eps", self.router_eps, positive=False)
        _positive(o, "expert_capacity", self.expert_capacity, zero_ok=True)
        # (groups that do not divide the experts count the same; routing them fails, as in transformers)
        if self.router == "sparsemixer" and self.top_k != 2:
            raise SpecError(f"{o}: the sparsemixer router picks exactly 2 experts, not top_k {self.top_k}")
        if self.capacity_factor is not None:
            if isinstance(self.capacity_factor, bool) or not isinstance(self.capacity_factor, (int, float)) \
                    or not self.capacity_factor > 0:
                raise SpecError(f"{o}: capacity_factor must be a positive number or None")


FFNS = (FFN, MoE)


# ---------------------------------------------------------------------------------------------
# layers and stacks

@dataclass(frozen=True)
class Block(_Part):
    """One layer: a ``mixer`` (or None), then, in a decoder of an encoder-decoder, ``cross``-attention to
    the encoder's output, then an ``ffn`` (or None). Each sublayer has its own norm before it (pre-norm;
    BERT normalises after, which counts the same); ``post_norms`` adds a second norm after each sublayer
    (Gemma 2 and 3: four norms per layer); ``extra_norms`` counts norms of D the layer holds beyond those
    (Qwen3-Next's layers whose type builds no mixer keep its norm; Gemma 4's MoE layers norm their dense and
    expert branches apart)."""

    mixer: Optional[Mixer] = None
    ffn: Optional[Union[FFN, MoE]] = None
    cross: Optional[Attention] = None
    post_norms: bool = False
    extra_norms: int = 0

    def __post_init__(self):
        if self.mixer is not None and not isinstance(self.mixer, MIXERS):
            raise SpecError(f"Block: mixer must be an Attention, LinearAttention, Mamba2 or None, got {self.mixer!r}")
        if self.ffn is not None and not isinstance(self.ffn, FFNS):
            raise SpecError(f"Block: ffn must be an FFN, a MoE or None, got {self.ffn!r}")
        if self.cross is not None and not isinstance(self.cross, Attention):
            raise SpecError("Block: cross must be an Attention or None")
        _flag("Block", "post_norms", self.post_norms)
        _positive("Block", "extra_norms", self.extra_norms, zero_ok=True)
        if self.mixer is None and self.ffn is None and self.cross is None:
            raise SpecError("Block: a layer needs a mixer, an ffn or both")

    @property
    def sublayers(self) -> int:
        """How many sublayers (each with its norm) the block has."""
        return sum(x is not None for x in (self.mixer, self.cross, self.ffn))

    @property
    def norms(self) -> int:
        """Norms in the block: one per sublayer, two with ``post_norms``, and the ``extra_norms``."""
        return self.sublayers * (2 if self.post_norms else 1) + self.extra_norms

    def describe(self) -> str:
        """One short line, e.g. 'attention(gqa, window 4096) + moe(E=8, k=2)'."""
        parts = []
        m = self.mixer
        if isinstance(m, Attention):
            extra = f", window {m.window}" if m.window else f", chunk {m.chunk}" if m.chunk else ""
            extra += ", sparse" if m.indexer else ""
            parts.append(f"attention({m.attention_kind} H={m.heads} K={m.kv_heads} d={m.head_dim}{extra})")
        elif isinstance(m, LinearAttention):
            parts.append(f"linear_attention(H={m.heads} Hk={m.key_heads} dk={m.key_dim} dv={m.value_dim})")
        elif isinstance(m, Mamba2):
            parts.append(f"mamba2(H={m.heads} P={m.head_dim} N={m.state} G={m.groups})")
        if self.cross is not None:
            parts.append("cross-attention")
        f = self.ffn
        if isinstance(f, FFN):
            parts.append(f"ffn(F={f.width}{', gated' if f.gated else ''})")
        elif isinstance(f, MoE):
            shared = f", S={f.shared_experts}" if f.shared_experts else ""
            parts.append(f"moe(E={f.experts}, k={f.top_k}, F={f.expert.width}{shared})")
        return " + ".join(parts)


@dataclass(frozen=True)
class Run(_Part):
    """``repeat`` identical layers in a row."""

    block: Block
    repeat: int = 1

    def __post_init__(self):
        if not isinstance(self.block, Block):
            raise SpecError(f"Run: block must be a Block, got {self.block!r}")
        _positive("Run", "repeat", self.repeat)


def runs(blocks: Iterable[Union[Block, Run]]) -> Tuple[Run, ...]:
    """Blocks (or runs) as runs, neighbours that are equal merged: ``runs([a, a, b])`` is
    ``(Run(a, 2), Run(b, 1))``."""
    out = []
    for item in blocks:
        run = item if isinstance(item, Run) else Run(item)
        if out and out[-1].block == run.block:
            out[-1] = Run(run.block, out[-1].repeat + run.repeat)
        else:
            out.append(run)
    return tuple(out)


def _stack_layers(stack: Tuple[Run, ...]) -> int:
    return sum(r.repeat for r in stack)


def _indices(stack: Tuple[Run, ...], keep) -> Tuple[int, ...]:
    out, start = [], 0
    for r in stack:
        if keep(r.block):
            out.extend(range(start, start + r.repeat))
        start += r.repeat
    return tuple(out)


def _resize(stack: Tuple[Run, ...], n: int, owner: str, name: str) -> Tuple[Run, ...]:
    """The first ``n`` layers of a stack, or the stack extended by repeating its last block."""
    _positive(owner, name, n)
    have = _stack_layers(stack)
    if n >= have:
        return runs([*stack, Run(stack[-1].block, n - have)]) if n > have else stack
    out, left = [], n
    for r in stack:
        if left == 0:
            break
        out.append(Run(r.block, min(r.repeat, left)))
        left -= out[-1].repeat
    return tuple(out)


def _unique(owner: str, what: str, items):
    """The one distinct item, None if there is none; an error if they differ."""
    distinct = list(dict.fromkeys(items))
    if len(distinct) > 1:
        raise SpecError(f"{owner}: its layers have {len(distinct)} different {what}s; read them from .blocks")
    return distinct[0] if distinct else None


_SHORTHAND = ("layers", "attention", "ffn", "moe", "moe_layers", "sliding_window", "sliding_layers",
              "encoder_layers", "encoder_moe_layers")


@dataclass(frozen=True, init=False)
class Transformer(_Part):
    """A transformer language model: a decoder (``blocks``), an encoder (``encoder``), or both.

    Decoder layers attend causally, encoder layers to every position; when both are present every
    decoder layer also has cross-attention to the encoder's output (T5, Switch). An encoder alone is
    BERT. The LM head reads the last stack.

    Construct it from ``blocks`` (and ``encoder``), each a sequence of :class:`Run` or :class:`Block`,
    or, for a homogeneous stack, from ``layers`` and ``attention`` with ``ffn`` and/or ``moe`` (layers
    ``moe_layers`` get the MoE, the rest the FFN) and ``sliding_window`` on ``sliding_layers``; an
    encoder the same way with ``encoder_layers`` and ``encoder_moe_layers``.
    """

    vocab: int  # V
    width: int  # D
    blocks: Tuple[Run, ...]  # the decoder (or the only stack)
    encoder: Tuple[Run, ...]  # the encoder, () if none
    norm: Norm
    tied: bool  # the LM head is the input embedding
    positions: int  # rows of a learned absolute position table (GPT-2/GPT-3, BERT); 0 for RoPE/relative
    relative_buckets: int  # T5: a (buckets x H) relative-position bias in each stack's first layer
    token_types: int  # BERT: rows of a token-type table
    embedding_norm: bool  # a norm right after the embeddings (BERT)
    final_norm: bool  # a norm after each stack's last layer (all but BERT)
    head_transform: bool  # BERT's LM head: a D x D dense layer with bias, activation and norm first
    head_bias: bool  # a bias of V on the LM head
    per_layer_input: int  # Gemma 4's per-layer embeddings: P features per layer and token (0: none)
    per_layer_vocab: int  # rows of the per-layer embedding table
    # the function, not the count
    embed_scale: float  # the embeddings times this (Gemma: sqrt(D); Granite: embedding_multiplier)
    residual_scale: float  # each sublayer's output times this before the residual add (Granite)
    logit_scale: float  # the logits times this (Granite: 1/logits_scaling; T5: D^-1/2 when tied)
    logit_softcap: float  # the logits capped as c*tanh(z/c) (Gemma 2, 4); 0: none
    post_norm: bool  # each sublayer's norm after the residual add (BERT) instead of before the sublayer
    relative_max_distance: int  # T5: offsets at least this far share the last bucket
    layer_scalar: bool  # each layer's output times a learned scalar, a buffer (Gemma 4)
    storage: Storage  # how its checkpoint stores the weights (serving bytes, not counts)
    name: str

    def __init__(self, vocab: int, width: int, layers: Optional[int] = None, attention: Optional[Attention] = None,
                 ffn: Optional[FFN] = None, moe: Optional[MoE] = None, moe_layers=(), *,
                 blocks=None, encoder=None, norm: Norm = None, tied: bool = False, positions: int = 0,
                 relative_buckets: int = 0, encoder_layers: int = 0, encoder_moe_layers=(),
                 sliding_window: int = 0, sliding_layers=(), token_types: int = 0, embedding_norm: bool = False,
                 final_norm: bool = True, head_transform: bool = False, head_bias: bool = False,
                 per_layer_input: int = 0, per_layer_vocab: int = 0, embed_scale: float = 1.0,
                 residual_scale: float = 1.0, logit_scale: float = 1.0, logit_softcap: float = 0.0,
                 post_norm: bool = False, relative_max_distance: int = 128, layer_scalar: bool = False,
                 storage: Storage = None, name: str = ""):
        o = f"Transformer {name!r}" if name else "Transformer"
        shorthand = layers is not None or attention is not None or ffn is not None or moe is not None
        if blocks is not None:
            if shorthand or moe_layers or sliding_window or sliding_layers:
                raise SpecError(f"{o}: give blocks, or layers with attention/ffn/moe, not both")
            blocks = _as_runs(o, "blocks", blocks)
        elif layers is None:
            raise SpecError(f"{o}: give the layers (layers with attention/ffn/moe, or blocks)")
        elif layers == 0:
            blocks = ()
        if encoder is not None:
            if encoder_layers or encoder_moe_layers:
                raise SpecError(f"{o}: give encoder, or encoder_layers, not both")
            encoder = _as_runs(o, "encoder", encoder)
        else:
            encoder = ()
            if encoder_layers:
                _positive(o, "encoder_layers", encoder_layers)
                if attention is None:
                    raise SpecError(f"{o}: encoder_layers needs attention")
                encoder = _homogeneous(o, encoder_layers, attention, ffn, moe, encoder_moe_layers, 0, (), None,
                                       "encoder_moe_layers")
            elif encoder_moe_layers:
                raise SpecError(f"{o}: encoder_moe_layers are listed but encoder_layers is 0")
        if blocks is None:
            _positive(o, "layers", layers)
            if attention is None:
                raise SpecError(f"{o}: layers needs an attention (or give blocks)")
            blocks = _homogeneous(o, layers, attention, ffn, moe, moe_layers, sliding_window, sliding_layers,
                                  attention if encoder else None, "moe_layers")
            if moe is not None and not moe_layers and not encoder_moe_layers:
                raise SpecError(f"{o}: a moe is given but moe_layers is empty")
        values = dict(vocab=vocab, width=width, blocks=blocks, encoder=encoder,
                      norm=Norm() if norm is None else norm, tied=tied, positions=positions,
                      relative_buckets=relative_buckets, token_types=token_types, embedding_norm=embedding_norm,
                      final_norm=final_norm, head_transform=head_transform, head_bias=head_bias,
                      per_layer_input=per_layer_input, per_layer_vocab=per_layer_vocab, embed_scale=embed_scale,
                      residual_scale=residual_scale, logit_scale=logit_scale, logit_softcap=logit_softcap,
                      post_norm=post_norm, relative_max_distance=relative_max_distance, layer_scalar=layer_scalar,
                      storage=Storage() if storage is None else storage, name=name)
        for k, v in values.items():
            object.__setattr__(self, k, v)
        self._validate()

    def _validate(self):
        o = f"Transformer {self.name!r}" if self.name else "Transformer"
        _positive(o, "vocab", self.vocab)
        _positive(o, "width", self.width)
        for name in ("positions", "relative_buckets", "token_types", "per_layer_input"):
            _positive(o, name, getattr(self, name), zero_ok=True)
        _positive(o, "per_layer_vocab", self.per_layer_vocab, zero_ok=True)
        if bool(self.per_layer_input) != bool(self.per_layer_vocab):
            raise SpecError(f"{o}: give per_layer_input and per_layer_vocab together")
        _positive(o, "relative_max_distance", self.relative_max_distance)
        for name in ("tied", "embedding_norm", "final_norm", "head_transform", "head_bias", "post_norm",
                     "layer_scalar"):
            _flag(o, name, getattr(self, name))
        for name in ("embed_scale", "residual_scale", "logit_scale"):
            _number(o, name, getattr(self, name))
        _number(o, "logit_softcap", self.logit_softcap, positive=False)
        if not isinstance(self.norm, Norm):
            raise SpecError(f"{o}: norm must be a Norm")
        if not isinstance(self.storage, Storage):
            raise SpecError(f"{o}: storage must be a Storage")
        if not isinstance(self.name, str):
            raise SpecError(f"{o}: name must be a string")
        if not self.blocks and not self.encoder:
            raise SpecError(f"{o}: has no layers")
        for stack, label in ((self.blocks, "decoder"), (self.encoder, "encoder")):
            if _stack_layers(stack) > BOUNDS["layers"]:
                raise SpecError(f"{o}: the {label} has {_short(_stack_layers(stack))} layers, beyond the bound "
                                f"{BOUNDS['layers']:,}: no model is that deep")
        cross = {r.block.cross is not None for r in self.blocks}
        if self.encoder and self.blocks and cross != {True}:
            raise SpecError(f"{o}: with an encoder, every decoder layer needs cross-attention")
        if not (self.encoder and self.blocks) and True in cross:
            raise SpecError(f"{o}: cross-attention needs both an encoder and a decoder")
        if any(r.block.cross is not None for r in self.encoder):
            raise SpecError(f"{o}: encoder layers have no cross-attention")
        if self.per_layer_input and self.encoder:
            raise SpecError(f"{o}: per-layer embeddings are for a decoder alone")
        for _, stack in self.stacks:
            made = set()
            for r in stack:
                m = r.block.mixer
                if isinstance(m, Attention) and not m.mla:
                    if m.kv_shared and m.kv_kind not in made:
                        raise SpecError(f"{o}: a layer reading shared keys and values needs an earlier layer of "
                                        "the same kind (window, chunk, heads, head sizes) that makes them")
                    if not m.kv_shared:
                        made.add(m.kv_kind)
            first = next((r.block.mixer.indexer for r in stack if isinstance(r.block.mixer, Attention)
                          and r.block.mixer.indexer is not None), None)
            if first is not None and first.shared:
                raise SpecError(f"{o}: a shared sparse-attention layer needs an indexer layer before it")

    # the stack, layer by layer
    @property
    def layers(self) -> int:
        """L: layers of the decoder (of the only stack, for a decoder-only model; 0 for an encoder alone)."""
        return _stack_layers(self.blocks)

    @property
    def encoder_layers(self) -> int:
        return _stack_layers(self.encoder)

    def layer(self, i: int, encoder: bool = False) -> Block:
        """Block ``i`` of the decoder (or of the encoder)."""
        start = 0
        for r in (self.encoder if encoder else self.blocks):
            if i < start + r.repeat:
                return r.block
            start += r.repeat
        raise IndexError(f"layer {i} of {start}")

    @property
    def stacks(self) -> Tuple[Tuple[str, Tuple[Run, ...]], ...]:
        """``(("encoder", runs), ("decoder", runs))``, each present stack in the order it runs."""
        return tuple((n, s) for n, s in (("encoder", self.encoder), ("decoder", self.blocks)) if s)

    def _all_blocks(self):
        return [r.block for _, s in self.stacks for r in s]

    # the homogeneous view: what a one-line Transformer(...) was given
    @property
    def attention(self) -> Optional[Attention]:
        """The attention every attention layer has (windows and chunks aside); None if no layer has
        attention. An error if layers differ: then read ``blocks``."""
        shapes = [m.shape for b in self._all_blocks() for m in (b.mixer, b.cross) if isinstance(m, Attention)]
        return _unique(self._owner, "attention", shapes)

    @property
    def ffn(self) -> Optional[FFN]:
        """The dense FFN of the layers that have one; None if none has."""
        return _unique(self._owner, "dense FFN", [b.ffn for b in self._all_blocks() if isinstance(b.ffn, FFN)])

    @property
    def moe(self) -> Optional[MoE]:
        """The MoE of the layers that have one; None if none has."""
        return _unique(self._owner, "MoE", [b.ffn for b in self._all_blocks() if isinstance(b.ffn, MoE)])

    @property
    def moe_layers(self) -> Tuple[int, ...]:
        """Indices of the decoder layers whose FFN is a MoE."""
        return _indices(self.blocks, lambda b: isinstance(b.ffn, MoE))

    @property
    def encoder_moe_layers(self) -> Tuple[int, ...]:
        return _indices(self.encoder, lambda b: isinstance(b.ffn, MoE))

    @property
    def sliding_layers(self) -> Tuple[int, ...]:
        """Indices of the decoder layers with a sliding window."""
        return _indices(self.blocks, lambda b: isinstance(b.mixer, Attention) and b.mixer.window > 0)

    @property
    def sliding_window(self) -> int:
        """The window of the sliding layers (0 if none)."""
        windows = [b.mixer.window for b in self._all_blocks() if isinstance(b.mixer, Attention) and b.mixer.window]
        return _unique(self._owner, "sliding window", windows) or 0

    @property
    def _owner(self) -> str:
        return f"Transformer {self.name!r}" if self.name else "Transformer"

    # convenient names in the book's notation
    @property
    def V(self) -> int:
        return self.vocab

    @property
    def D(self) -> int:
        return self.width

    @property
    def L(self) -> int:
        return self.layers

    @property
    def is_moe(self) -> bool:
        return any(isinstance(b.ffn, MoE) for b in self._all_blocks())

    @property
    def encoder_decoder(self) -> bool:
        return bool(self.encoder) and bool(self.blocks)

    def with_(self, **changes) -> "Transformer":
        """A copy with some fields changed (validated again). Besides the stored fields it takes the
        one-line constructor's words, applied to every layer they concern:

        * ``layers=n`` (``encoder_layers=n``): the first n layers, or the stack extended by repeating its
          last layer -- the pattern of a large model kept in a small one;
        * ``attention=A``: every attention (cross-attention too) becomes A, keeping each layer's window
          and chunks; ``ffn=F``, ``moe=M``: every dense FFN, every MoE;
        * ``moe_layers=[...]`` (``encoder_moe_layers``): those layers get the MoE, the others the dense FFN;
        * ``sliding_window=W`` and/or ``sliding_layers=[...]``: those layers get window W, the others none.
        """
        words = {k: changes.pop(k) for k in _SHORTHAND if k in changes}
        spec = replace(self, **changes) if changes else self
        return spec._reshaped(**words) if words else spec

    def _reshaped(self, layers=None, attention=None, ffn=None, moe=None, moe_layers=None, sliding_window=None,
                  sliding_layers=None, encoder_layers=None, encoder_moe_layers=None) -> "Transformer":
        o = self._owner
        dec, enc = self.blocks, self.encoder
        if layers is not None:
            dec = _resize(dec, layers, o, "layers")
        if encoder_layers is not None:
            enc = _resize(enc, encoder_layers, o, "encoder_layers") if enc else \
                _homogeneous(o, encoder_layers, attention or self.attention, ffn or self.ffn, moe or self.moe, (),
                             0, (), None, "encoder_moe_layers")

        def each(stack, fn):
            return runs(Run(fn(r.block), r.repeat) for r in stack)

        if attention is not None:
            if not isinstance(attention, Attention):
                raise SpecError(f"{o}: attention must be an Attention")

            def swap(m):
                return replace(attention, window=m.window, chunk=m.chunk) if isinstance(m, Attention) else m
            dec = each(dec, lambda b: replace(b, mixer=swap(b.mixer), cross=swap(b.cross)))
            enc = each(enc, lambda b: replace(b, mixer=swap(b.mixer)))
        for stack_name, indices in (("decoder", moe_layers), ("encoder", encoder_moe_layers)):
            stack = dec if stack_name == "decoder" else enc
            if indices is not None:
                name = "moe_layers" if stack_name == "decoder" else "encoder_moe_layers"
                chosen = set(_layer_set(o, name, indices, _stack_layers(stack)))
                new_moe, new_ffn = moe or self.moe, ffn or self.ffn
                expanded = _expand(stack)
                if chosen and new_moe is None:
                    raise SpecError(f"{o}: {name} are listed but no moe is given")
                if len(chosen) < len(expanded) and new_ffn is None:
                    raise SpecError(f"{o}: {len(expanded) - len(chosen)} layers have no MoE, so a dense ffn is needed")
                stack = runs(replace(b, ffn=new_moe if i in chosen else new_ffn) if b.ffn is not None else b
                             for i, b in enumerate(expanded))
            if stack_name == "decoder":
                dec = stack
            else:
                enc = stack
        if moe is not None or ffn is not None:
            dec = each(dec, lambda b: replace(b, ffn=_swap_ffn(b.ffn, ffn, moe)))
            enc = each(enc, lambda b: replace(b, ffn=_swap_ffn(b.ffn, ffn, moe)))
        if sliding_window is not None or sliding_layers is not None:
            window = self.sliding_window if sliding_window is None else sliding_window
            expanded = _expand(dec)
            chosen = set(_layer_set(o, "sliding_layers", self.sliding_layers if sliding_layers is None
                                    else sliding_layers, len(expanded)))
            if chosen and not window:
                raise SpecError(f"{o}: sliding_layers are listed but sliding_window is 0")
            dec = runs(replace(b, mixer=replace(b.mixer, window=window if i in chosen else 0, chunk=0))
                       if isinstance(b.mixer, Attention) else b for i, b in enumerate(expanded))
        return replace(self, blocks=dec, encoder=enc)


def _swap_ffn(old, ffn, moe):
    if isinstance(old, FFN) and ffn is not None:
        return ffn
    if isinstance(old, MoE) and moe is not None:
        return moe
    return old


def _expand(stack: Tuple[Run, ...]):
    return [r.block for r in stack for _ in range(r.repeat)]


def _as_runs(owner: str, name: str, items) -> Tuple[Run, ...]:
    try:
        items = tuple(items)
    except TypeError:
        raise SpecError(f"{owner}: {name} must be a list of Run or Block objects") from None
    if not all(isinstance(x, (Run, Block)) for x in items):
        raise SpecError(f"{owner}: {name} must be a list of Run or Block objects")
    return runs(items)


def _homogeneous(o, layers, attention, ffn, moe, moe_layers, sliding_window, sliding_layers, cross,
                 moe_name) -> Tuple[Run, ...]:
    """The runs of a stack written in one line."""
    if not isinstance(attention, Attention):
        raise SpecError(f"{o}: attention must be an Attention")
    if ffn is not None and not isinstance(ffn, FFN):
        raise SpecError(f"{o}: ffn must be an FFN or None")
    if moe is not None and not isinstance(moe, MoE):
        raise SpecError(f"{o}: moe must be a MoE or None")
    _positive(o, "layers", layers)
    moe_set = set(_layer_set(o, moe_name, moe_layers, layers))
    if moe_set and moe is None:
        raise SpecError(f"{o}: {moe_name} are listed but no moe is given")
    if len(moe_set) < layers and ffn is None:
        raise SpecError(f"{o}: {layers - len(moe_set)} layers have no MoE, so a dense ffn is needed")
    _positive(o, "sliding_window", sliding_window, zero_ok=True)
    sliding = set(_layer_set(o, "sliding_layers", sliding_layers, layers))
    if sliding and not sliding_window:
        raise SpecError(f"{o}: sliding_layers are listed but sliding_window is 0")
    windowed = replace(attention, window=sliding_window, chunk=0) if sliding else attention
    # runs, computed from the sorted indices where something changes (not layer by layer)
    edges = sorted({0, layers, *moe_set, *(i + 1 for i in moe_set), *sliding, *(i + 1 for i in sliding)})
    out = []
    for a, b in zip(edges, edges[1:]):
        if a >= layers:
            break
        block = Block(mixer=windowed if a in sliding else attention, cross=cross,
                      ffn=moe if a in moe_set else ffn)
        out.append(Run(block, b - a))
    return runs(out)


@dataclass(frozen=True)
class Table(_Part):
    """One embedding table of a recommendation model: ``rows`` x ``dim``, and ``pooling``
    rows read (and summed) per example."""

    rows: int
    dim: int
    pooling: int = 1

    def __post_init__(self):
        _positive("Table", "rows", self.rows)
        _positive("Table", "dim", self.dim)
        _positive("Table", "pooling", self.pooling)


@dataclass(frozen=True)
class EmbeddingModel(_Part):
    """A DLRM-style recommendation model.

    ``dense_features`` go through the bottom MLP (its last width must equal the tables' dim);
    each table is pooled to one vector; the pairwise dot products of all these vectors
    (``interaction="dot"``), concatenated with the bottom MLP's output, go through the top MLP.
    Every MLP layer is a Linear with bias.
    """

    dense_features: int
    tables: Tuple[Table, ...]
    bottom_mlp: Tuple[int, ...]
    top_mlp: Tuple[int, ...]
    interaction: str = "dot"
    name: str = ""

    def __post_init__(self):
        o = f"EmbeddingModel {self.name!r}" if self.name else "EmbeddingModel"
        _positive(o, "dense_features", self.dense_features)
        object.__setattr__(self, "tables", tuple(self.tables))
        object.__setattr__(self, "bottom_mlp", tuple(self.bottom_mlp))
        object.__setattr__(self, "top_mlp", tuple(self.top_mlp))
        if not self.tables:
            raise SpecError(f"{o}: needs at least one table")
        if len(self.tables) > BOUNDS["experts"]:
            raise SpecError(f"{o}: {len(self.tables):,} tables, beyond the bound {BOUNDS['experts']:,}")
        if not all(isinstance(t, Table) for t in self.tables):
            raise SpecError(f"{o}: tables must be Table objects")
        if not self.bottom_mlp or not self.top_mlp:
            raise SpecError(f"{o}: bottom_mlp and top_mlp each need at least one layer width")
        for name in ("bottom_mlp", "top_mlp"):
            if len(getattr(self, name)) > BOUNDS["layers"]:
                raise SpecError(f"{o}: {name} has more than {BOUNDS['layers']:,} layers")
            for w in getattr(self, name):
                _positive(o, f"a {name} width", w)
        dims = {t.dim for t in self.tables}
        if len(dims) != 1:
            raise SpecError(f"{o}: all tables must have the same dim, got {sorted(dims)}")
        if self.bottom_mlp[-1] != self.dim:
            raise SpecError(f"{o}: the bottom MLP must end at the tables' dim ({self.dim}), got {self.bottom_mlp[-1]}")
        _choice(o, "interaction", self.interaction, ("dot", "cat"))

    @property
    def dim(self) -> int:
        return self.tables[0].dim

    @property
    def interaction_width(self) -> int:
        """Width of the top MLP's input."""
        n = len(self.tables) + 1  # the pooled tables and the bottom MLP's output
        if self.interaction == "dot":
            return self.dim + n * (n - 1) // 2
        return self.dim * n


Spec = Union[Transformer, EmbeddingModel]


def spec_fields(cls) -> Tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


# ---------------------------------------------------------------------------------------------
# the library's own format: a spec as a plain dict (JSON), for models with no Hugging Face config

_KINDS = {"transformer": Transformer, "embedding_model": EmbeddingModel}
_MIXER_KINDS = {c.kind: c for c in MIXERS}
_FFN_KINDS = {c.kind: c for c in FFNS}
_NESTED = {"attention": Attention, "ffn": FFN, "moe": MoE, "norm": Norm, "expert": FFN, "shared": FFN,
           "indexer": Indexer, "cross": Attention, "block": Block, "storage": Storage, "rope": Rope}
_PARTS = (Transformer, EmbeddingModel, Attention, LinearAttention, Mamba2, Indexer, FFN, MoE, Norm, Table,
          Block, Run, Storage, Rope)


def to_dict(spec: Spec) -> dict:
    """A spec as a JSON-ready dict, ``{"whatruns": "transformer", ...}``, its layers as runs of blocks
    whose mixer and ffn name their ``kind``; :func:`from_dict` reads it back."""
    kind = next(k for k, c in _KINDS.items() if isinstance(spec, c))
    return {"whatruns": kind, **_plain(spec)}


def _plain(obj):
    if isinstance(obj, _PARTS):
        d = {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)}
        if isinstance(obj, MIXERS + FFNS):
            d = {"kind": obj.kind, **d}
        return d
    if isinstance(obj, tuple):
        return [_plain(x) for x in obj]
    return obj


def from_dict(d: dict) -> Spec:
    """Read a spec written in the library's own format (see :func:`to_dict`). A transformer may also be
    written in the one-line form: ``layers``, ``attention``, ``ffn``, ``moe``, ``moe_layers``, ..."""
    if not isinstance(d, dict):
        raise SpecError(f"a spec must be a JSON object, got {type(d).__name__}")
    kind = d.get("whatruns")
    if kind not in _KINDS:
        raise SpecError(f"unknown spec kind {kind!r}; expected one of {', '.join(_KINDS)}")
    body = {k: v for k, v in d.items() if k != "whatruns"}
    return _build(_KINDS[kind], body, kind)


def _names(cls) -> Tuple[str, ...]:
    if cls is Transformer:
        return spec_fields(cls) + _SHORTHAND
    return spec_fields(cls)


def _build(cls, body: dict, where: str):
    if not isinstance(body, dict):
        raise SpecError(f"{where}: expected an object, got {body!r}")
    if cls in MIXERS + FFNS and "kind" in body:
        body = {k: v for k, v in body.items() if k != "kind"}
    names = _names(cls)
    unknown = sorted(set(body) - set(names))
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}")
    args = {}
    for k, v in body.items():
        if k in ("mixer", "ffn") and cls is Block and v is not None:
            v = _build_kind(_MIXER_KINDS if k == "mixer" else _FFN_KINDS, v, f"{where}.{k}")
        elif k in _NESTED and isinstance(v, dict):  # (Indexer.shared is a flag, MoE.shared an FFN)
            v = _build(_NESTED[k], v, f"{where}.{k}")
        elif k in ("blocks", "encoder") and cls is Transformer:
            if not isinstance(v, list):
                raise SpecError(f"{where}.{k}: expected a list")
            v = tuple(_build(Run, r, f"{where}.{k}[{i}]") for i, r in enumerate(v))
        elif k == "tables":
            if not isinstance(v, list):
                raise SpecError(f"{where}.tables: expected a list")
            v = tuple(_build(Table, t, f"{where}.tables[{i}]") for i, t in enumerate(v))
        elif isinstance(v, list):
            v = tuple(v)
        args[k] = v
    if cls is Transformer:
        if "blocks" not in args and "layers" not in args:
            raise SpecError(f"{where}: missing field(s) blocks (or layers)")
        return cls(**args)
    missing = [f.name for f in fields(cls)
               if f.default is MISSING and f.default_factory is MISSING and f.name not in args]
    if missing:
        raise SpecError(f"{where}: missing field(s) {', '.join(missing)}")
    return cls(**args)


def _build_kind(kinds: dict, body, where: str):
    if not isinstance(body, dict):
        raise SpecError(f"{where}: expected an object, got {body!r}")
    kind = body.get("kind")
    if kind not in kinds:
        raise SpecError(f"{where}: kind must be one of {', '.join(kinds)}, got {kind!r}")
    return _build(kinds[kind], body, where)
