"""What a model is: sizes and structure, validated on construction.

Everything else in :mod:`whatruns` reads a spec: :func:`whatruns.count` counts it,
:func:`whatruns.build` turns it into a torch module, :func:`whatruns.load` makes one
from a Hugging Face ``config.json``.

Notation (the book's, see the introduction): V vocabulary, D width, L layers,
H query heads, K key/value heads, F FFN width, E routed experts, k top-k, S shared experts.

Two kinds of model are described:

* :class:`Transformer` -- a decoder-only transformer, dense or mixture-of-experts, or an
  encoder-decoder one (T5 / Switch) when ``encoder_layers > 0``.
* :class:`EmbeddingModel` -- a recommendation model (DLRM): many embedding tables, a
  pooling factor per table, and small MLPs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Optional, Tuple, Union


class SpecError(ValueError):
    """A spec (or a config it came from) that cannot describe a real model.

    The message is one line, fit to print to a user as it is.
    """


def _positive(owner: str, name: str, value, zero_ok: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{owner}: {name} must be an integer, got {value!r}")
    if value < 0 or (value == 0 and not zero_ok):
        raise SpecError(f"{owner}: {name} must be {'non-negative' if zero_ok else 'positive'}, got {value}")


def _flag(owner: str, name: str, value) -> None:
    if not isinstance(value, bool):
        raise SpecError(f"{owner}: {name} must be true or false, got {value!r}")


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


@dataclass(frozen=True)
class Norm:
    """A normalisation layer: RMSNorm (a weight of D) or LayerNorm (weight, and bias if ``bias``)."""

    kind: str = "rmsnorm"
    bias: bool = False

    def __post_init__(self):
        if self.kind not in ("rmsnorm", "layernorm"):
            raise SpecError(f"Norm: kind must be 'rmsnorm' or 'layernorm', got {self.kind!r}")
        _flag("Norm", "bias", self.bias)
        if self.kind == "rmsnorm" and self.bias:
            raise SpecError("Norm: an RMSNorm has no bias")

    def params(self, width: int) -> int:
        """Parameters of one norm over ``width`` features."""
        return width * (2 if self.bias else 1)


@dataclass(frozen=True)
class Attention:
    """Self-attention of one layer.

    MHA when ``kv_heads == heads``, GQA when fewer (MQA at 1), MLA (DeepSeek-V2/V3)
    when ``kv_lora_rank > 0``.

    ``head_dim`` is the size of a query/key head (for MLA: the no-position part plus
    ``rope_head_dim``); ``v_head_dim`` the size of a value head (default ``head_dim``).
    """

    heads: int
    kv_heads: int
    head_dim: int
    v_head_dim: Optional[int] = None
    bias: bool = False  # bias on the q, k, v projections (MLA: on the down-projections)
    out_bias: bool = False  # bias on the output projection
    qk_norm: bool = False  # an RMSNorm weight of head_dim on q and on k (Qwen3)
    sinks: bool = False  # one learned attention-sink logit per head (gpt-oss)
    q_lora_rank: int = 0  # MLA: rank of the query compression (0: no compression)
    kv_lora_rank: int = 0  # MLA: rank of the key/value latent (0: not MLA)
    rope_head_dim: int = 0  # MLA: the decoupled rotary part of head_dim, shared across heads

    def __post_init__(self):
        o = "Attention"
        _positive(o, "heads", self.heads)
        _positive(o, "kv_heads", self.kv_heads)
        _positive(o, "head_dim", self.head_dim)
        if self.v_head_dim is None:
            object.__setattr__(self, "v_head_dim", self.head_dim)
        _positive(o, "v_head_dim", self.v_head_dim)
        for name in ("bias", "out_bias", "qk_norm", "sinks"):
            _flag(o, name, getattr(self, name))
        for name in ("q_lora_rank", "kv_lora_rank", "rope_head_dim"):
            _positive(o, name, getattr(self, name), zero_ok=True)
        if self.heads % self.kv_heads:
            raise SpecError(f"{o}: heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")
        if self.mla:
            if self.kv_heads != self.heads:
                raise SpecError(f"{o}: MLA has as many key/value heads as query heads")
            if not 0 < self.rope_head_dim < self.head_dim:
                raise SpecError(f"{o}: MLA's rope_head_dim must be between 0 and head_dim ({self.head_dim})")
        elif self.q_lora_rank or self.rope_head_dim:
            raise SpecError(f"{o}: q_lora_rank and rope_head_dim need MLA (kv_lora_rank > 0)")

    @property
    def mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def kind(self) -> str:
        if self.mla:
            return "mla"
        return "mha" if self.kv_heads == self.heads else ("mqa" if self.kv_heads == 1 else "gqa")


@dataclass(frozen=True)
class FFN:
    """A feed-forward network of hidden width F: gated (three matrices: gate, up, down)
    or plain (two: up, down), with or without biases."""

    width: int
    gated: bool = True
    bias: bool = False
    activation: str = "silu"

    def __post_init__(self):
        _positive("FFN", "width", self.width)
        _flag("FFN", "gated", self.gated)
        _flag("FFN", "bias", self.bias)
        if self.activation not in ACTIVATIONS:
            raise SpecError(f"FFN: activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")

    @property
    def matrices(self) -> int:
        return 3 if self.gated else 2


ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu", "swiglu_oai")


@dataclass(frozen=True)
class MoE:
    """A mixture-of-experts FFN: a router sends each token to ``top_k`` of ``experts``
    routed experts (each an :class:`FFN`); optional shared experts run for every token.

    ``shared`` is all the shared experts fused into one FFN, as Hugging Face builds them
    (DeepSeek: width S times the expert width); ``shared_experts`` is S.
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
        if (self.shared is None) != (self.shared_experts == 0):
            raise SpecError(f"{o}: give shared (the fused shared FFN) and shared_experts (S) together")
        for name in ("shared_gate", "router_bias", "score_bias", "score_bias_buffer"):
            _flag(o, name, getattr(self, name))
        if self.score_bias_buffer and not self.score_bias:
            raise SpecError(f"{o}: score_bias_buffer needs score_bias")
        if self.shared_gate and self.shared is None:
            raise SpecError(f"{o}: shared_gate needs a shared expert")
        if self.router not in ROUTERS:
            raise SpecError(f"{o}: router must be one of {', '.join(ROUTERS)}, got {self.router!r}")
        if self.capacity_factor is not None:
            if isinstance(self.capacity_factor, bool) or not isinstance(self.capacity_factor, (int, float)) \
                    or not self.capacity_factor > 0:
                raise SpecError(f"{o}: capacity_factor must be a positive number or None")


# softmax_topk: softmax over all experts, keep the top k (Switch, GShard, DeepSeek-V2, Qwen-MoE without renorm)
# topk_softmax: keep the top k logits, softmax over them (Mixtral, Qwen3-MoE, DBRX, gpt-oss)
# sigmoid_topk: sigmoid scores, top k, renormalised (DeepSeek-V3, Llama 4 without renorm)
ROUTERS = ("softmax_topk", "topk_softmax", "sigmoid_topk")


@dataclass(frozen=True)
class Transformer:
    """A transformer language model: decoder-only, or encoder-decoder when ``encoder_layers > 0``.

    Layer ``i`` of the decoder uses ``moe`` if ``i in moe_layers``, else the dense ``ffn``.
    The encoder (if any) has the same attention and FFN shapes, its own ``encoder_moe_layers``,
    and its own final norm; every decoder layer then also has cross-attention.
    """

    vocab: int  # V
    width: int  # D
    layers: int  # L, decoder layers
    attention: Attention
    ffn: Optional[FFN] = None  # the dense FFN of layers not in moe_layers
    moe: Optional[MoE] = None
    moe_layers: Tuple[int, ...] = ()
    norm: Norm = field(default_factory=Norm)
    tied: bool = False  # the LM head is the input embedding
    positions: int = 0  # rows of a learned absolute position table (GPT-2/GPT-3); 0 for RoPE/relative
    relative_buckets: int = 0  # T5: a (buckets x H) relative-position bias in each stack's first layer
    encoder_layers: int = 0
    encoder_moe_layers: Tuple[int, ...] = ()
    sliding_window: int = 0  # keys a query sees on sliding layers (0: none); FLOPs only, no parameters
    sliding_layers: Tuple[int, ...] = ()
    name: str = ""

    def __post_init__(self):
        o = f"Transformer {self.name!r}" if self.name else "Transformer"
        _positive(o, "vocab", self.vocab)
        _positive(o, "width", self.width)
        _positive(o, "layers", self.layers)
        _positive(o, "positions", self.positions, zero_ok=True)
        _positive(o, "relative_buckets", self.relative_buckets, zero_ok=True)
        _positive(o, "encoder_layers", self.encoder_layers, zero_ok=True)
        _positive(o, "sliding_window", self.sliding_window, zero_ok=True)
        _flag(o, "tied", self.tied)
        if not isinstance(self.attention, Attention):
            raise SpecError(f"{o}: attention must be an Attention")
        if not isinstance(self.norm, Norm):
            raise SpecError(f"{o}: norm must be a Norm")
        if self.ffn is not None and not isinstance(self.ffn, FFN):
            raise SpecError(f"{o}: ffn must be an FFN or None")
        if self.moe is not None and not isinstance(self.moe, MoE):
            raise SpecError(f"{o}: moe must be a MoE or None")
        object.__setattr__(self, "moe_layers", _layer_set(o, "moe_layers", self.moe_layers, self.layers))
        object.__setattr__(self, "encoder_moe_layers",
                           _layer_set(o, "encoder_moe_layers", self.encoder_moe_layers, self.encoder_layers))
        object.__setattr__(self, "sliding_layers", _layer_set(o, "sliding_layers", self.sliding_layers, self.layers))
        if (self.moe_layers or self.encoder_moe_layers) and self.moe is None:
            raise SpecError(f"{o}: moe_layers are listed but no moe is given")
        if self.moe is not None and not (self.moe_layers or self.encoder_moe_layers):
            raise SpecError(f"{o}: a moe is given but moe_layers is empty")
        dense = self.layers - len(self.moe_layers) + self.encoder_layers - len(self.encoder_moe_layers)
        if dense and self.ffn is None:
            raise SpecError(f"{o}: {dense} layers have no MoE, so a dense ffn is needed")
        if self.sliding_layers and not self.sliding_window:
            raise SpecError(f"{o}: sliding_layers are listed but sliding_window is 0")

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
        return self.moe is not None

    @property
    def encoder_decoder(self) -> bool:
        return self.encoder_layers > 0

    def with_(self, **changes) -> "Transformer":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


@dataclass(frozen=True)
class Table:
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
class EmbeddingModel:
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
        if not all(isinstance(t, Table) for t in self.tables):
            raise SpecError(f"{o}: tables must be Table objects")
        if not self.bottom_mlp or not self.top_mlp:
            raise SpecError(f"{o}: bottom_mlp and top_mlp each need at least one layer width")
        for name in ("bottom_mlp", "top_mlp"):
            for w in getattr(self, name):
                _positive(o, f"a {name} width", w)
        dims = {t.dim for t in self.tables}
        if len(dims) != 1:
            raise SpecError(f"{o}: all tables must have the same dim, got {sorted(dims)}")
        if self.bottom_mlp[-1] != self.dim:
            raise SpecError(f"{o}: the bottom MLP must end at the tables' dim ({self.dim}), got {self.bottom_mlp[-1]}")
        if self.interaction not in ("dot", "cat"):
            raise SpecError(f"{o}: interaction must be 'dot' or 'cat', got {self.interaction!r}")

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
_NESTED = {"attention": Attention, "ffn": FFN, "moe": MoE, "norm": Norm, "expert": FFN, "shared": FFN}


def to_dict(spec: Spec) -> dict:
    """A spec as a JSON-ready dict, ``{"whatruns": "transformer", ...}``; :func:`from_dict` reads it back."""
    kind = next(k for k, c in _KINDS.items() if isinstance(spec, c))
    return {"whatruns": kind, **_plain(spec)}


def _plain(obj):
    if isinstance(obj, (Transformer, EmbeddingModel, Attention, FFN, MoE, Norm, Table)):
        return {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple):
        return [_plain(x) for x in obj]
    return obj


def from_dict(d: dict) -> Spec:
    """Read a spec written in the library's own format (see :func:`to_dict`)."""
    if not isinstance(d, dict):
        raise SpecError(f"a spec must be a JSON object, got {type(d).__name__}")
    kind = d.get("whatruns")
    if kind not in _KINDS:
        raise SpecError(f"unknown spec kind {kind!r}; expected one of {', '.join(_KINDS)}")
    body = {k: v for k, v in d.items() if k != "whatruns"}
    return _build(_KINDS[kind], body, kind)


def _build(cls, body: dict, where: str):
    if not isinstance(body, dict):
        raise SpecError(f"{where}: expected an object, got {body!r}")
    names = spec_fields(cls)
    unknown = sorted(set(body) - set(names))
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {', '.join(unknown)}")
    args = {}
    for k, v in body.items():
        if k in _NESTED and v is not None:
            v = _build(_NESTED[k], v, f"{where}.{k}")
        elif k == "tables":
            if not isinstance(v, list):
                raise SpecError(f"{where}.tables: expected a list")
            v = tuple(_build(Table, t, f"{where}.tables[{i}]") for i, t in enumerate(v))
        elif isinstance(v, list):
            v = tuple(v)
        args[k] = v
    from dataclasses import MISSING
    missing = [f.name for f in fields(cls)
               if f.default is MISSING and f.default_factory is MISSING and f.name not in args]
    if missing:
        raise SpecError(f"{where}: missing field(s) {', '.join(missing)}")
    return cls(**args)
