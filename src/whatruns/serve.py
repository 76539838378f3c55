"""What serving costs: bytes per token (chapter "What serving costs").

A served model pays in bytes as much as in FLOPs. This module counts them from the spec alone:

* :func:`kv_cache_bytes` -- the cache a sequence keeps while it decodes: keys and values of every
  attention layer, MLA's compressed latent, a sparse-attention indexer's keys, the fixed-size states of
  linear-attention and Mamba-2 layers;
* :func:`weight_tensors` and :func:`weight_bytes` -- every tensor the checkpoint stores, and its bytes
  *as stored* (bf16, fp8 with block scales, MXFP4, NVFP4, GPTQ, AWQ, compressed-tensors), read from
  ``spec.storage`` (a config's ``torch_dtype`` and ``quantization_config``);
* :func:`decode_step` and :func:`prefill` -- the roofline time of one step on an accelerator of
  :data:`ACCELERATORS` (a data table with the vendors' figures and sources): the larger of FLOPs over
  peak FLOP/s and bytes over memory bandwidth; :func:`max_batch` and :func:`max_context` -- what fits.

Everything reads ``spec.blocks`` run by run: a run of n equal layers is one term times n.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from .count import (attention_params, attention_projection_flops, attention_score_flops, count,
                    experts_touched, ffn_flops, indexer_score_flops, linear_params, mixer_flops, moe_flops)
from .spec import (BOUNDS, FFN, Attention, Block, EmbeddingModel, LinearAttention, Mamba2, MoE, Norm,
                   SpecError, Transformer, _positive)

__all__ = ["Tensor", "weight_tensors", "WeightBytes", "weight_bytes", "KVCache", "KV_KINDS", "kv_cache_bytes",
           "cached_tokens", "attention_cache_elements", "linear_attention_state", "mamba2_state", "Accelerator",
           "ACCELERATORS", "accelerator", "Step", "weight_bytes_read", "decode_flops", "decode_step", "prefill", "memory_needed",
           "max_batch", "max_context", "check_fits", "devices_needed", "kv_crossover", "dtype_bytes", "DTYPE_BYTES",
           "SCHEMES"]

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1, "float8": 1,
               "fp8": 1, "int8": 1}
"""Bytes per element of the dtype names this module reads (``float8``/``fp8``: either 8-bit float)."""

_DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16",
                  "e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2"}


def dtype_bytes(dtype: Union[str, int], what: str = "dtype") -> int:
    """Bytes per element of a dtype name (:data:`DTYPE_BYTES`) or a positive integer given as it is."""
    if isinstance(dtype, bool):
        raise SpecError(f"{what} must be a dtype name or a number of bytes, got {dtype!r}")
    if isinstance(dtype, int):
        if dtype <= 0 or dtype > 16:
            raise SpecError(f"{what}: bytes per element must be between 1 and 16, got {dtype}")
        return dtype
    if isinstance(dtype, str):
        name = _DTYPE_ALIASES.get(dtype.strip().lower(), dtype.strip().lower())
        if name in DTYPE_BYTES:
            return DTYPE_BYTES[name]
        close = difflib.get_close_matches(name, list(DTYPE_BYTES), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpecError(f"unknown {what} {dtype!r}{hint}; known: {', '.join(DTYPE_BYTES)}")
    raise SpecError(f"{what} must be a dtype name or a number of bytes, got {dtype!r}")


def _a(obj) -> str:
    name = type(obj).__name__
    return f"{'an' if name[0] in 'AEIOU' else 'a'} {name}"


# ---------------------------------------------------------------------------------------------
# the tensors a checkpoint stores

@dataclass(frozen=True)
class Tensor:
    """One kind of tensor a checkpoint stores, and how many of it.

    ``name`` is its name in Hugging Face's usual layout (Llama / Qwen / DeepSeek), with ``{i}`` for the
    layer index and ``{e}`` for the expert index: ``model.layers.{i}.mlp.experts.{e}.down_proj.weight``.
    ``shape`` is the shape of one such tensor; there is one per layer of ``layers`` (a range of indices of
    the stack ``stack``; ``None`` outside the layers) and, when ``experts`` > 0, one per routed expert of
    each of those layers: ``copies`` in all. ``role`` says what a quantization scheme may do with it:

    * ``"linear"`` -- the weight matrix (out, in) of a Linear layer inside a layer (attention and mixer
      projections, FFN and expert matrices, latent projections): what weight-quantization schemes quantize;
    * ``"router"`` -- a router's (E, D) weight or a shared expert's (1, D) gate: a Linear, but left in
      full precision by the fp8, MXFP4, GPTQ and AWQ checkpoints this module reads;
    * ``"head"`` -- the LM head's (V, D) weight: a Linear that those schemes also leave unquantized;
    * ``"bias"`` -- the bias of one of those Linear layers;
    * ``"embedding"`` -- a lookup table (tokens, positions, token types);
    * ``"other"`` -- norms, router biases, sinks, convolutions, per-head scalars.

    ``component`` is the :func:`whatruns.count.count` breakdown the tensor's parameters belong to.
    ``buffer``: stored in the checkpoint but a buffer, not a parameter, in ``transformers`` (DeepSeek-V3's
    ``e_score_correction_bias``), so in no parameter count. ``dtype``: a dtype the checkpoint fixes for this
    tensor whatever the others' (that bias is float32 in DeepSeek-V3's, R1's and Kimi K2's checkpoints).
    """

    name: str
    shape: Tuple[int, ...]
    role: str
    component: str
    stack: Optional[str] = None
    layers: Optional[Tuple[int, int]] = None
    experts: int = 0
    buffer: bool = False
    dtype: Optional[str] = None

    @property
    def copies(self) -> int:
        n = 1 if self.layers is None else self.layers[1] - self.layers[0]
        return n * max(self.experts, 1)

    @property
    def size(self) -> int:
        """Elements of one tensor."""
        return math.prod(self.shape)

    @property
    def numel(self) -> int:
        """Elements of all its copies."""
        return self.size * self.copies

    @property
    def linear(self) -> bool:
        """Whether it is the weight matrix of a Linear layer."""
        return self.role in ("linear", "router", "head")

    @property
    def expert(self) -> bool:
        """Whether it belongs to a routed expert (one copy per expert)."""
        return self.experts > 0

    @property
    def module(self) -> str:
        """The module it belongs to: its name without the last part (``.weight``, ``.bias``)."""
        return self.name.rsplit(".", 1)[0]


def weight_tensors(spec) -> Tuple[Tensor, ...]:
    """Every tensor a checkpoint of ``spec`` stores, one :class:`Tensor` per kind and run of layers (never
    one per layer). Their elements add up to ``count(spec).total_params`` (buffers aside), component by
    component. Routed experts are listed as one 2-D matrix per expert, as most checkpoints store them
    (gpt-oss stores them fused into 3-D tensors, which changes no byte count: block scales run along the
    input dimension either way). Tied embeddings are stored once."""
    if isinstance(spec, EmbeddingModel):
        return _dlrm_tensors(spec)
    if not isinstance(spec, Transformer):
        raise SpecError(f"cannot list the tensors of {_a(spec)}; expected a Transformer or an "
                        "EmbeddingModel")
    out: List[Tensor] = []
    D, V = spec.width, spec.vocab

    def add(name, shape, role="other", component="embedding", **kw):
        out.append(Tensor(name, tuple(shape), role, component, **kw))

    add("model.embed_tokens.weight", (V, D), "embedding")
    if spec.positions:
        add("model.embed_positions.weight", (spec.positions, D), "embedding")
    if spec.token_types:
        add("model.token_type_embeddings.weight", (spec.token_types, D), "embedding")
    if spec.embedding_norm:
        _norm(add, "model.embedding_norm", spec.norm, D, "norms")
    if spec.per_layer_input:  # Gemma 4: a table of L x P per token, a projection of the embedding to L x P, and
        # in every decoder layer a gate D -> P, a projection P -> D and a norm of D
        L, P = spec.layers, spec.per_layer_input
        add("model.embed_tokens_per_layer.weight", (spec.per_layer_vocab, L * P), "embedding")
        _linear(add, "model.per_layer_model_projection", D, L * P, False, "per_layer_input")
        add("model.per_layer_projection_norm.weight", (P,), "other", "per_layer_input")
        every = dict(stack="decoder", layers=(0, L))
        _linear(add, "model.layers.{i}.per_layer_input_gate", D, P, False, "per_layer_input", **every)
        _linear(add, "model.layers.{i}.per_layer_projection", P, D, False, "per_layer_input", **every)
        _norm(add, "model.layers.{i}.post_per_layer_input_norm", spec.norm, D, "norms", **every)
    if not spec.tied:
        add("lm_head.weight", (V, D), "head", "head")
    if spec.head_bias:
        add("lm_head.bias", (V,), "other", "head")
    if spec.head_transform:
        add("lm_head.transform.dense.weight", (D, D), "head", "head")
        add("lm_head.transform.dense.bias", (D,), "other", "head")
        _norm(add, "lm_head.transform.norm", spec.norm, D, "head")
    enc_dec = bool(spec.encoder) and bool(spec.blocks)
    for stack_name, stack in spec.stacks:
        prefix = "model" if not spec.encoder else f"model.{stack_name}"
        if spec.relative_buckets:
            first = stack[0].block.mixer
            add(f"{prefix}.layers.0.self_attn.relative_attention_bias.weight", (spec.relative_buckets, first.heads),
                "other", "attention", stack=stack_name, layers=(0, 1))
        if spec.final_norm:
            _norm(add, f"{prefix}.norm", spec.norm, D, "norms", stack=stack_name)
        start = 0
        for run in stack:
            where = dict(stack=stack_name, layers=(start, start + run.repeat))
            _block_tensors(add, f"{prefix}.layers.{{i}}", D, run.block, spec.norm, where,
                           cross_name="encoder_attn" if enc_dec else "cross_attn")
            start += run.repeat
    return tuple(out)


def _norm(add, name, norm: Norm, width: int, component: str, **where):
    add(f"{name}.weight", (width,), "other", component, **where)
    if norm.bias:
        add(f"{name}.bias", (width,), "other", component, **where)


def _linear(add, name, d_in, d_out, bias, component, role="linear", **where):
    add(f"{name}.weight", (d_out, d_in), role, component, **where)
    if bias:
        add(f"{name}.bias", (d_out,), "bias", component, **where)


def _block_tensors(add, p, D, b: Block, norm: Norm, where, cross_name):
    m = b.mixer
    norms = []
    if isinstance(m, Attention):
        _attention_tensors(add, f"{p}.self_attn", D, m, where)
        norms.append("input_layernorm")
    elif isinstance(m, LinearAttention):
        _linear_attention_tensors(add, f"{p}.linear_attn", D, m, where)
        norms.append("input_layernorm")
    elif isinstance(m, Mamba2):
        _mamba2_tensors(add, f"{p}.mixer", D, m, where)
        norms.append("input_layernorm")
    if b.cross is not None:
        _attention_tensors(add, f"{p}.{cross_name}", D, b.cross, where)
        norms.append("cross_attention_layernorm")
    f = b.ffn
    if isinstance(f, FFN):
        _ffn_tensors(add, f"{p}.mlp", D, f, "dense_ffn", where)
        norms.append("post_attention_layernorm" if m is not None else "pre_feedforward_layernorm")
    elif isinstance(f, MoE):
        _moe_tensors(add, f"{p}.mlp", D, f, where)
        norms.append("post_attention_layernorm" if m is not None else "pre_feedforward_layernorm")
    if b.post_norms:
        norms += [f"post_{n}" for n in norms]
    norms += [f"extra_layernorm_{j}" for j in range(b.extra_norms)]
    for n in norms:
        _norm(add, f"{p}.{n}", norm, D, "norms", **where)


def _attention_tensors(add, p, D, a: Attention, where):
    H, K, dh, dv = a.heads, a.kv_heads, a.head_dim, a.v_head_dim
    q_out = H * dh * (2 if a.gate == "channel" else 1)
    c = "attention"
    if a.mla:
        nope = dh - a.rope_head_dim
        if a.q_lora_rank:
            _linear(add, f"{p}.q_a_proj", D, a.q_lora_rank, a.bias, c, **where)
            add(f"{p}.q_a_layernorm.weight", (a.q_lora_rank,), "other", c, **where)
            _linear(add, f"{p}.q_b_proj", a.q_lora_rank, q_out, False, c, **where)
        else:
            _linear(add, f"{p}.q_proj", D, q_out, False, c, **where)
        _linear(add, f"{p}.kv_a_proj_with_mqa", D, a.kv_lora_rank + a.rope_head_dim, a.bias, c, **where)
        add(f"{p}.kv_a_layernorm.weight", (a.kv_lora_rank,), "other", c, **where)
        _linear(add, f"{p}.kv_b_proj", a.kv_lora_rank, H * (nope + dv), False, c, **where)
    else:
        _linear(add, f"{p}.q_proj", D, q_out, a.bias, c, **where)
        if not a.kv_shared:  # a layer that reads an earlier layer's keys and values makes none
            _linear(add, f"{p}.k_proj", D, K * dh, a.bias, c, **where)
            if not a.values_from_keys:
                _linear(add, f"{p}.v_proj", D, K * dv, a.bias, c, **where)
    _linear(add, f"{p}.o_proj", H * dv, D, a.out_bias, c, **where)
    if a.gate == "head":
        _linear(add, f"{p}.g_proj", D, H, False, c, **where)
    if a.qk_norm == "head":
        add(f"{p}.q_norm.weight", (dh,), "other", c, **where)
        if not a.kv_shared:
            add(f"{p}.k_norm.weight", (dh,), "other", c, **where)
    elif a.qk_norm == "full":
        add(f"{p}.q_norm.weight", (H * dh,), "other", c, **where)
        if not a.kv_shared:
            add(f"{p}.k_norm.weight", (K * dh,), "other", c, **where)
    if a.sinks:
        add(f"{p}.sinks", (H,), "other", c, **where)
    if a.indexer is not None and not a.indexer.shared:
        i = a.indexer
        _linear(add, f"{p}.indexer.wq_b", a.q_lora_rank, i.heads * i.head_dim, False, c, **where)
        _linear(add, f"{p}.indexer.wk", D, i.head_dim, False, c, **where)
        add(f"{p}.indexer.k_norm.weight", (i.head_dim,), "other", c, **where)
        add(f"{p}.indexer.k_norm.bias", (i.head_dim,), "other", c, **where)
        _linear(add, f"{p}.indexer.weights_proj", D, i.heads, False, c, **where)


def _linear_attention_tensors(add, p, D, m: LinearAttention, where):
    H, Hk, dk, dv = m.heads, m.key_heads, m.key_dim, m.value_dim
    c = "linear_attention"
    _linear(add, f"{p}.in_proj_qkvz", D, 2 * Hk * dk + 2 * H * dv, False, c, **where)
    _linear(add, f"{p}.in_proj_ba", D, 2 * H, False, c, **where)
    add(f"{p}.conv1d.weight", (m.conv_channels, 1, m.conv), "other", c, **where)
    add(f"{p}.dt_bias", (H,), "other", c, **where)
    add(f"{p}.A_log", (H,), "other", c, **where)
    add(f"{p}.norm.weight", (dv,), "other", c, **where)
    _linear(add, f"{p}.out_proj", H * dv, D, False, c, **where)


def _mamba2_tensors(add, p, D, m: Mamba2, where):
    I, G, N, H = m.inner, m.groups, m.state, m.heads
    c = "ssm"
    _linear(add, f"{p}.in_proj", D, 2 * I + 2 * G * N + H, m.bias, c, **where)
    add(f"{p}.conv1d.weight", (m.conv_channels, 1, m.conv), "other", c, **where)
    if m.conv_bias:
        add(f"{p}.conv1d.bias", (m.conv_channels,), "other", c, **where)
    add(f"{p}.dt_bias", (H,), "other", c, **where)
    add(f"{p}.A_log", (H,), "other", c, **where)
    add(f"{p}.D", (H,), "other", c, **where)
    add(f"{p}.norm.weight", (I,), "other", c, **where)
    _linear(add, f"{p}.out_proj", I, D, m.bias, c, **where)


def _ffn_tensors(add, p, D, f: FFN, component, where, experts=0):
    names = (("gate_proj", D, f.width), ("up_proj", D, f.width)) if f.gated else (("up_proj", D, f.width),)
    for name, d_in, d_out in (*names, ("down_proj", f.width, D)):
        _linear(add, f"{p}.{name}", d_in, d_out, f.bias, component, experts=experts, **where)


def _moe_tensors(add, p, D, f: MoE, where):
    add(f"{p}.gate.weight", (f.experts, D), "router", "router", **where)
    if f.router_bias:
        add(f"{p}.gate.bias", (f.experts,), "other", "router", **where)
    if f.score_bias:
        add(f"{p}.gate.e_score_correction_bias", (f.experts,), "other", "router", buffer=f.score_bias_buffer,
            dtype="float32" if f.score_bias_buffer else None, **where)
    if f.router_scale:  # Gemma 4: a scale on the router's input and one per expert
        add(f"{p}.gate.scale", (D,), "other", "router", **where)
        add(f"{p}.gate.per_expert_scale", (f.experts,), "other", "router", **where)
    if f.latent:
        _linear(add, f"{p}.fc1_latent_proj", D, f.latent, f.latent_bias, "routed_experts", **where)
        _linear(add, f"{p}.fc2_latent_proj", f.latent, D, f.latent_bias, "routed_experts", **where)
    _ffn_tensors(add, f"{p}.experts.{{e}}", f.latent or D, f.expert, "routed_experts", where, experts=f.experts)
    if f.shared is not None:
        _ffn_tensors(add, f"{p}.shared_experts", D, f.shared, "shared_experts", where)
        if f.shared_gate:
            add(f"{p}.shared_expert_gate.weight", (1, D), "router", "shared_experts", **where)


def _dlrm_tensors(s: EmbeddingModel) -> Tuple[Tensor, ...]:
    out = [Tensor(f"tables.{t}.weight", (tab.rows, tab.dim), "embedding", "embedding")
           for t, tab in enumerate(s.tables)]
    for name, widths in (("bottom_mlp", [s.dense_features, *s.bottom_mlp]), ("top_mlp", [s.interaction_width,
                                                                                        *s.top_mlp])):
        for j, (d_in, d_out) in enumerate(zip(widths, widths[1:])):
            out.append(Tensor(f"{name}.{j}.weight", (d_out, d_in), "linear", "mlp"))
            out.append(Tensor(f"{name}.{j}.bias", (d_out,), "other", "mlp"))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# module names, and the patterns quantization configs use to name them

_SYNONYMS = (  # (the name used here, how other families' checkpoints name the same module)
    (".mlp.gate.", (".mlp.router.", ".block_sparse_moe.gate.", ".feed_forward.router.")),
    (".mlp.experts.", (".block_sparse_moe.experts.", ".feed_forward.experts.")),
    (".mlp.shared_experts.", (".mlp.shared_expert.", ".feed_forward.shared_expert.")),
    (".mlp.", (".feed_forward.", ".block_sparse_moe.")),
    (".gate_proj.", (".w1.",)),
    (".up_proj.", (".w3.",)),
    (".down_proj.", (".w2.",)),
    ("model.layers.", ("model.language_model.layers.", "language_model.model.layers.")),
    ("model.embed_tokens.", ("model.language_model.embed_tokens.", "language_model.model.embed_tokens.")),
)
"""Rewrites of a module name into the names other model families give it: gpt-oss calls its router
``mlp.router``, Mixtral its MoE ``block_sparse_moe`` and its expert matrices ``w1, w3, w2``, Llama 4 its FFN
``feed_forward``, wrapped (multimodal) models put the text layers under ``language_model``. A pattern from a
quantization config matches a tensor when it matches any of these names."""


def _aliases(module: str) -> List[str]:
    names = [module]
    for ours, theirs in _SYNONYMS:
        for n in list(names):
            probe = n + "."
            if ours in probe:
                names += [probe.replace(ours, t, 1)[:-1] for t in theirs]
    return list(dict.fromkeys(names))


def _hf_match(name: str, pattern: str) -> bool:
    """transformers' ``should_convert_module`` test: the pattern matches from the start up to a module
    boundary (as a regex), or is a suffix of the name."""
    boundary = r"(?:(?<=\.)|(?=\.|$))"
    try:
        return bool(re.match(rf"(?:{pattern}){boundary}", name)) or name.endswith(pattern)
    except re.error:
        return name.endswith(pattern)


def _ct_match(name: str, target: str) -> bool:
    """compressed-tensors' ``match_name``: ``re:`` then a regex matched from the start, else the exact name;
    the class name ``Linear`` matches every Linear."""
    if target.startswith("re:"):
        try:
            return re.match(target[3:], name) is not None
        except re.error as e:
            raise SpecError(f"quantization_config: {target!r} is not a valid regular expression ({e})") from None
    return target == name or target == "Linear"


def _glob_match(name: str, pattern: str) -> bool:
    """ModelOpt's ``exclude_modules``: shell-style wildcards over the module name."""
    return fnmatch.fnmatchcase(name, pattern)


_INDEX_BLIND = re.compile(r"^[^0-9?\[\]{}()|+\\]*$")
_MAX_NAMES = 2 ** 22


def _matched(t: Tensor, patterns, match) -> int:
    """How many of ``t``'s copies have a module name (or an alias of it) that a pattern matches.

    A pattern with no digits and no regex or glob construct that could tell one index from another matches
    all copies or none: it is tried once, on the first and the last copy. Any other pattern (one that names
    layer 3, or ``layers\\.1\\d\\.``) is tried on every copy's name: exact, though one name per copy."""
    if not patterns:
        return 0
    if t.layers is None and not t.experts:
        return t.copies if _any_match(t.module, patterns, match) else 0
    first, stop = t.layers if t.layers is not None else (0, 1)
    experts = max(t.experts, 1)

    def name(i, e):
        return t.module.replace("{i}", str(i)).replace("{e}", str(e))
    if all(_INDEX_BLIND.match(p) and ".." not in p for p in patterns):
        ends = {_any_match(name(first, 0), patterns, match), _any_match(name(stop - 1, experts - 1), patterns, match)}
        if len(ends) == 1:
            return t.copies if ends.pop() else 0
    if t.copies > _MAX_NAMES:
        raise SpecError(f"quantization_config names modules by index, and {t.name} has {t.copies:,} copies: "
                        "too many to match one by one")
    return sum(_any_match(name(i, e), patterns, match) for i in range(first, stop) for e in range(experts))


def _any_match(module: str, patterns, match) -> bool:
    return any(match(alias, p) for alias in _aliases(module) for p in patterns)


# ---------------------------------------------------------------------------------------------
# weights as stored

SCHEMES = ("none", "fp8", "mxfp4", "modelopt", "gptq", "awq", "compressed-tensors")
"""The ``quant_method`` values :func:`weight_bytes` reads ("none": no ``quantization_config``); ModelOpt
covers its NVFP4 and FP8 checkpoints, compressed-tensors its int4/int8, fp8, NVFP4 and MXFP4 formats."""


@dataclass(frozen=True)
class WeightBytes:
    """What :func:`weight_bytes` returns: ``total`` bytes, and the same bytes by ``component`` (as
    :func:`whatruns.count.count` names them) and by ``format`` (what the bytes are: ``bfloat16``,
    ``float8_e4m3fn``, ``float32 scales``, ``mxfp4 blocks``, ...). ``scheme`` names the reading;
    ``quantized`` is the number of elements stored quantized; ``entries`` pairs each tensor with its bytes
    (all copies)."""

    total: int
    scheme: str
    by_component: Dict[str, int]
    by_format: Dict[str, int]
    quantized: int
    entries: Tuple[Tuple[Tensor, int], ...] = field(repr=False)

    def where(self, keep) -> int:
        """Bytes of the tensors for which ``keep(tensor)`` is true."""
        return sum(b for t, b in self.entries if keep(t))

    def as_dict(self) -> dict:
        return {"total": self.total, "scheme": self.scheme, "by_component": dict(self.by_component),
                "by_format": dict(self.by_format), "quantized_elements": self.quantized}


def weight_bytes(spec, dtype: Optional[str] = None) -> WeightBytes:
    """Bytes of the checkpoint's tensors as the checkpoint stores them: the sum over
    :func:`weight_tensors` of each tensor's bytes in its stored format, scales, zero points and
    per-tensor metadata included (what a ``model.safetensors.index.json`` calls ``total_size``).

    The format comes from ``spec.storage`` (a config's ``torch_dtype`` / ``dtype`` and ``quantization_config``,
    ``whatruns.hf.storage``), or, with ``dtype``, every tensor in that dtype (the "bf16 habit":
    ``weight_bytes(spec, "bfloat16")``). What each scheme stores, per Linear weight of ``out`` x ``in``
    (tensors the scheme does not convert stay in the checkpoint's dtype):

    * no quantization -- every tensor in ``torch_dtype`` (float32 4 bytes, bfloat16 / float16 2);
    * ``fp8`` (DeepSeek-V3, Kimi K2, Qwen3-FP8; transformers' FineGrainedFP8) -- the Linear weights of the
      layers in fp8 (1 byte) plus a float32 ``weight_scale_inv`` per ``weight_block_size`` block,
      ceil(out/128) x ceil(in/128) for 128 x 128 (one per tensor without a block size), plus a float32
      activation scale per Linear when ``activation_scheme`` is ``static``; routers, the LM head,
      embeddings and norms stay in ``torch_dtype``;
    * ``mxfp4`` (gpt-oss) -- the routed experts' matrices only, in blocks of 32 four-bit values along the
      input dimension: 16 bytes per block and one 8-bit (E8M0) scale per block, 4.25 bits per weight; all
      else in ``torch_dtype``, or bfloat16 when the config names none (gpt-oss's configs name none; its
      model card says everything else is bf16);
    * ``modelopt`` with ``quant_algo`` ``NVFP4`` -- each Linear weight as packed 4-bit values (in/2 bytes per
      row), one float8 e4m3 scale per 16 values, a float32 global weight scale and a float32 input scale;
      ``FP8`` -- fp8 weights and two float32 scalars. ``exclude_modules`` are shell-style patterns;
    * ``gptq`` -- ``qweight`` (in x out x bits/8 bytes, int32-packed), ``qzeros`` and float16 ``scales`` per
      group of ``group_size`` inputs (groups x out x bits/8 and groups x out x 2 bytes), and an int32
      ``g_idx`` of ``in`` entries; a bias becomes float16; ``modules_in_block_to_quantize`` restricts what
      is converted;
    * ``awq`` (``version`` ``gemm``) -- ``qweight`` as GPTQ's, ``qzeros`` and float16 ``scales`` per group,
      no ``g_idx``;
    * ``compressed-tensors`` -- per ``config_groups`` entry, by its ``format``: ``pack-quantized`` packs
      sub-8-bit integers into int32 (out x ceil(in x bits / 32) words) and keeps an int64 ``weight_shape`` of
      2; ``int-quantized`` / ``naive-quantized`` and ``float-quantized`` store one byte per weight;
      ``nvfp4-pack-quantized`` and ``mxfp4-pack-quantized`` pack two values a byte with float8 (per 16) or
      uint8 (per 32) scales and, for NVFP4, a float32 global scale. Scales have the shape of the strategy
      (``tensor`` 1, ``channel`` out, ``group`` out x groups, ``block`` blocks) in the checkpoint's dtype
      unless the format fixes it; asymmetric schemes add zero points (packed into int32 by
      ``pack-quantized``); static input quantization adds input scales; a ``kv_cache_scheme`` adds a k and
      a v scale per attention layer. Targets and ``ignore`` entries are module names, ``re:`` regexes or
      the class name ``Linear``.

    ``modules_to_not_convert`` (transformers' rule: a regex from the start of a module name up to a
    boundary, or a suffix) and ``ignore`` lists are honoured, under the names other families give the same
    modules (``_SYNONYMS`` in the source). Every layer Linear is converted unless listed; the router and the LM head
    are converted only by compressed-tensors and ModelOpt, and only when their targets reach them.

    A scheme not listed, or an option of one that is not modelled (AWQ's gemv packing, ModelOpt's mixed
    precision), is a :class:`~whatruns.spec.SpecError` naming it: never a silent guess. So is a checkpoint
    whose config names no dtype and no scheme (GPT-2's): give ``dtype``.
    """
    tensors = weight_tensors(spec)
    storage = getattr(spec, "storage", None)
    if dtype is not None:
        scheme = _Plain(_dtype_name(dtype))
    else:
        q = storage.quantization_config if storage is not None else None
        base = storage.dtype if storage is not None else None
        scheme = _scheme(q, base)
    entries, by_component, by_format, quantized = [], {}, {}, 0
    for t in tensors:
        parts, n_quantized = scheme.tensor_bytes(t)
        total = sum(parts.values())
        entries.append((t, total))
        by_component[t.component] = by_component.get(t.component, 0) + total
        for k, v in parts.items():
            by_format[k] = by_format.get(k, 0) + v
        quantized += n_quantized
    total = sum(b for _, b in entries) + scheme.extra_bytes(tensors)
    for k, v in scheme.extra_formats(tensors).items():
        by_format[k] = by_format.get(k, 0) + v
    return WeightBytes(total, scheme.label, by_component, by_format, quantized, tuple(entries))


def _dtype_name(dtype) -> str:
    name = _DTYPE_ALIASES.get(str(dtype).strip().lower(), str(dtype).strip().lower())
    dtype_bytes(name, "weight dtype")
    return name


class _Plain:
    """Every tensor in one dtype (a checkpoint without quantization)."""

    def __init__(self, dtype: str, label: str = None):
        self.dtype = dtype
        self.b = dtype_bytes(dtype)
        self.label = label or dtype

    def plain(self, t: Tensor, n: int) -> Dict[str, int]:
        d = t.dtype or self.dtype
        return {d: n * dtype_bytes(d)}

    def tensor_bytes(self, t: Tensor):
        return self.plain(t, t.numel), 0

    def extra_bytes(self, tensors) -> int:
        return 0

    def extra_formats(self, tensors) -> Dict[str, int]:
        return {}


def _scheme(q: Optional[dict], base: Optional[str]):
    if not q:
        if base is None:
            raise SpecError("the config names no torch_dtype and no quantization_config, so the stored bytes "
                            "are unknown: name a dtype (weight_bytes(spec, 'bfloat16'); on the command line, "
                            "--weight-dtype)")
        return _Plain(base)
    method = q.get("quant_method")
    if not isinstance(method, str):
        raise SpecError(f"quantization_config has no quant_method (got {method!r}); known: {', '.join(SCHEMES[1:])}")
    key = method.strip().lower()
    makers = {"fp8": _FP8, "mxfp4": _MXFP4, "modelopt": _ModelOpt, "gptq": _GPTQ, "awq": _AWQ,
              "compressed-tensors": _CompressedTensors, "compressed_tensors": _CompressedTensors}
    if key not in makers:
        close = difflib.get_close_matches(key, list(makers), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpecError(f"quantization_config: quant_method {method!r} is a scheme whatruns does not read{hint}; "
                        f"known: {', '.join(SCHEMES[1:])}")
    return makers[key](q, base)


def _list(q: dict, key: str, what: str = "quantization_config") -> List[str]:
    v = q.get(key)
    if v is None:
        return []
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
        raise SpecError(f"{what}: {key} must be a list of module names, got {v!r}")
    return list(v)


def _int(q: dict, key: str, default, what: str, allowed=None):
    v = q.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise SpecError(f"{what}: {key} must be an integer, got {v!r}")
    if allowed is not None and v not in allowed:
        raise SpecError(f"{what}: {key} {v} is not modelled; whatruns reads {', '.join(map(str, allowed))}")
    return v


class _Quantized(_Plain):
    """What the schemes share: which tensors a scheme converts (``converts``), the bytes of a converted
    Linear weight (``linear_bytes``), and everything else in the checkpoint's dtype."""

    name = ""
    skip: List[str] = []
    match = staticmethod(_hf_match)

    def __init__(self, q: dict, base: Optional[str], default_dtype: Optional[str] = None):
        dtype = base or default_dtype
        if dtype is None:
            raise SpecError(f"{self.name} quantization_config: the config names no torch_dtype for the tensors "
                            "the scheme leaves unquantized; give a dtype")
        super().__init__(dtype)
        self.q = q

    def converts(self, t: Tensor) -> bool:
        return t.role == "linear"

    def tensor_bytes(self, t: Tensor):
        if not self.converts(t):
            return self.plain(t, t.numel), 0
        skipped = _matched(t, self.skip, self.match)
        parts = self.plain(t, skipped * t.size) if skipped else {}
        n = t.copies - skipped
        if n:
            out, d_in = t.shape
            for k, v in self.linear_bytes(out, d_in, t).items():
                parts[k] = parts.get(k, 0) + n * v
        return parts, n * t.size


class _FP8(_Quantized):
    name = "fp8"

    def __init__(self, q, base):
        super().__init__(q, base)
        fmt = q.get("fmt", "e4m3")
        if fmt not in ("e4m3", "e5m2"):
            raise SpecError(f"fp8 quantization_config: fmt {fmt!r} is not e4m3 or e5m2")
        self.fmt = "float8_e4m3fn" if fmt == "e4m3" else "float8_e5m2"
        block = q.get("weight_block_size", [128, 128])
        if block is not None and (not isinstance(block, (list, tuple)) or len(block) != 2
                                  or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in block)):
            raise SpecError(f"fp8 quantization_config: weight_block_size must be two positive integers or null, "
                            f"got {block!r}")
        self.block = tuple(block) if block is not None else None
        act = q.get("activation_scheme", "dynamic")
        if act not in ("dynamic", "static"):
            raise SpecError(f"fp8 quantization_config: activation_scheme {act!r} is not dynamic or static")
        self.static = act == "static"
        self.skip = _list(q, "modules_to_not_convert", "fp8 quantization_config")
        self.label = f"fp8 {fmt}, {'x'.join(map(str, self.block)) + ' blocks' if self.block else 'one scale a tensor'}"

    def linear_bytes(self, out, d_in, t):
        scales = math.ceil(out / self.block[0]) * math.ceil(d_in / self.block[1]) if self.block else 1
        return {self.fmt: out * d_in, "float32 scales": 4 * (scales + (1 if self.static else 0))}


class _MXFP4(_Quantized):
    name = "mxfp4"

    def __init__(self, q, base):
        super().__init__(q, base, default_dtype="bfloat16")
        self.skip = _list(q, "modules_to_not_convert", "mxfp4 quantization_config")
        self.label = f"mxfp4 experts, rest {self.dtype}"

    def converts(self, t):
        return t.role == "linear" and t.expert

    def linear_bytes(self, out, d_in, t):
        blocks = out * math.ceil(d_in / 32)
        return {"mxfp4 blocks": 16 * blocks, "uint8 scales": blocks}


class _ModelOpt(_Quantized):
    name = "modelopt"
    match = staticmethod(_glob_match)

    def __init__(self, q, base):
        super().__init__(q, base)
        algo = q.get("quant_algo")
        if algo not in ("NVFP4", "FP8"):
            raise SpecError(f"modelopt quantization_config: quant_algo {algo!r} is not modelled; whatruns reads "
                            "NVFP4 and FP8")
        self.algo = algo
        self.group = _int(q, "group_size", 16, "modelopt quantization_config", (16,)) if algo == "NVFP4" else None
        self.skip = _list(q, "exclude_modules", "modelopt quantization_config") + _list(
            q, "ignore", "modelopt quantization_config")
        self.label = f"modelopt {algo}"

    def converts(self, t):
        return t.linear

    def linear_bytes(self, out, d_in, t):
        if self.algo == "FP8":
            return {"float8_e4m3fn": out * d_in, "float32 scales": 8}
        return {"nvfp4 values": out * math.ceil(d_in / 2), "float8_e4m3fn scales": out * math.ceil(d_in / 16),
                "float32 scales": 8}


class _GPTQ(_Quantized):
    name = "gptq"
    bias_dtype = "float16"

    def __init__(self, q, base):
        super().__init__(q, base)
        what = f"{self.name} quantization_config"
        self.bits = _int(q, "bits", 4, what, (2, 3, 4, 8))
        g = _int(q, "group_size", 128, what)
        if g != -1 and g <= 0:
            raise SpecError(f"{what}: group_size must be positive or -1, got {g}")
        self.group = g
        fmt = q.get("checkpoint_format", "gptq")
        if self.name == "gptq" and fmt not in ("gptq", "gptq_v2"):
            raise SpecError(f"{what}: checkpoint_format {fmt!r} is not modelled; whatruns reads gptq")
        self.skip = _list(q, "modules_to_not_convert", what)
        inside = q.get("modules_in_block_to_quantize")
        self.inside = None
        if inside is not None:
            flat = [x for group in inside for x in (group if isinstance(group, list) else [group])]
            if not all(isinstance(x, str) for x in flat):
                raise SpecError(f"{what}: modules_in_block_to_quantize must list module names")
            self.inside = flat
        self.label = f"{self.name} int{self.bits}, group {g}"

    def converts(self, t):
        if t.role != "linear":
            return False
        if self.inside is not None:
            return _matched(t, self.inside, lambda name, m: name.endswith("." + m)) == t.copies
        return True

    def groups(self, d_in):
        return 1 if self.group == -1 else math.ceil(d_in / self.group)

    def linear_bytes(self, out, d_in, t):
        g = self.groups(d_in)
        return {f"int{self.bits} packed": d_in * out * self.bits // 8, "int32 zeros": g * out * self.bits // 8,
                "float16 scales": 2 * g * out, "int32 g_idx": 4 * d_in}

    def tensor_bytes(self, t):
        if t.role == "bias" and self._bias_of_converted(t):
            return {self.bias_dtype: 2 * t.numel}, 0  # stored as float16 beside its qweight
        return super().tensor_bytes(t)

    def _bias_of_converted(self, t: Tensor) -> bool:
        weight = Tensor(t.name[:-len("bias")] + "weight", (1, 1), "linear", t.component, t.stack, t.layers,
                        t.experts)
        return self.converts(weight) and _matched(weight, self.skip, self.match) == 0


class _AWQ(_GPTQ):
    name = "awq"

    def __init__(self, q, base):
        version = q.get("version", "gemm")
        if str(version).lower() != "gemm":
            raise SpecError(f"awq quantization_config: version {version!r} is not modelled; whatruns reads gemm")
        q = {**q, "bits": q.get("bits", q.get("w_bit", 4)), "group_size": q.get("group_size", q.get("q_group_size",
                                                                                                        128))}
        super().__init__(q, base)
        self.label = f"awq int{self.bits}, group {self.group}"

    def linear_bytes(self, out, d_in, t):
        g = self.groups(d_in)
        return {f"int{self.bits} packed": d_in * out * self.bits // 8, "int32 zeros": g * out * self.bits // 8,
                "float16 scales": 2 * g * out}


_CT_FORMATS = ("pack-quantized", "int-quantized", "naive-quantized", "float-quantized", "nvfp4-pack-quantized",
               "mxfp4-pack-quantized", "dense")


class _CompressedTensors(_Quantized):
    """compressed-tensors (llm-compressor, vLLM): groups of targets, each with its weight arguments."""

    name = "compressed-tensors"
    match = staticmethod(_ct_match)

    def __init__(self, q, base):
        super().__init__(q, base)
        what = "compressed-tensors quantization_config"
        groups = q.get("config_groups")
        if not isinstance(groups, dict) or not groups:
            raise SpecError(f"{what}: config_groups must be a non-empty object")
        self.skip = _list(q, "ignore", what)
        top_format = q.get("format")
        self.groups = []
        for gname, g in groups.items():
            if not isinstance(g, dict):
                raise SpecError(f"{what}: config_groups.{gname} must be an object")
            targets = _list(g, "targets", f"{what}: config_groups.{gname}")
            fmt = g.get("format") or top_format
            if fmt not in _CT_FORMATS:
                raise SpecError(f"{what}: format {fmt!r} is not modelled; whatruns reads {', '.join(_CT_FORMATS)}")
            w = g.get("weights")
            if fmt != "dense" and not isinstance(w, dict):
                raise SpecError(f"{what}: config_groups.{gname}.weights must be an object")
            self.groups.append((targets, fmt, w or {}, g.get("input_activations")))
        self.kv = q.get("kv_cache_scheme") is not None
        self.label = "compressed-tensors " + ", ".join(sorted({f for _, f, _, _ in self.groups}))

    def converts(self, t):
        return t.linear and self._group(t) is not None

    def _group(self, t: Tensor):
        for g in self.groups:
            n = _matched(t, g[0], self.match)
            if n == t.copies:
                return g
            if n:
                raise SpecError(f"compressed-tensors quantization_config: targets {g[0]} reach some copies of "
                                f"{t.name} and not others; whatruns does not model that")
        return None

    def linear_bytes(self, out, d_in, t):
        targets, fmt, w, act = self._group(t)
        what = "compressed-tensors quantization_config"
        parts: Dict[str, int] = {}

        def put(k, v):
            parts[k] = parts.get(k, 0) + v
        if fmt == "dense":
            put(self.dtype, out * d_in * self.b)
            return parts
        bits = _int(w, "num_bits", 8, what)
        kind = w.get("type", "int")
        strategy = w.get("strategy", "tensor")
        symmetric = w.get("symmetric", True)
        if fmt in ("nvfp4-pack-quantized", "mxfp4-pack-quantized"):
            group = 16 if fmt.startswith("nvfp4") else 32
            put("fp4 values", out * math.ceil(d_in / 2))
            put("float8_e4m3fn scales" if group == 16 else "uint8 scales", out * math.ceil(d_in / group))
            if group == 16:
                put("float32 scales", 4)
                if isinstance(act, dict) and act.get("strategy") == "tensor_group":
                    put("float32 scales", 4)
            return parts
        if fmt == "pack-quantized":
            if kind != "int" or not 1 <= bits <= 8:
                raise SpecError(f"{what}: pack-quantized needs int weights of 1 to 8 bits, got {kind} {bits}")
            put(f"int{bits} packed", 4 * out * math.ceil(d_in * bits / 32))
            put("int64 weight_shape", 16)
        elif fmt in ("int-quantized", "naive-quantized", "float-quantized"):
            if bits != 8:
                raise SpecError(f"{what}: {fmt} stores 8-bit weights, got {bits} bits")
            put("float8_e4m3fn" if kind == "float" else "int8", out * d_in)
        n_scales = self._scales(strategy, w, out, d_in, what)
        put(f"{self.dtype} scales", n_scales * self.b)
        if not symmetric:
            if fmt == "pack-quantized" and strategy in ("group", "channel"):
                put("int32 zeros", 4 * math.ceil(out * bits / 32) * (n_scales // out))
            else:
                put("int8 zeros" if kind == "int" else "float8 zeros", n_scales)
        if isinstance(act, dict) and act.get("dynamic") is False:
            put(f"{self.dtype} scales", self.b * (1 if act.get("symmetric", True) else 2))
        return parts

    @staticmethod
    def _scales(strategy, w, out, d_in, what) -> int:
        if strategy == "tensor":
            return 1
        if strategy == "channel":
            return out
        if strategy in ("group", "tensor_group"):
            g = _int(w, "group_size", 128, what)
            if g <= 0:
                raise SpecError(f"{what}: group_size must be positive, got {g}")
            return out * math.ceil(d_in / g)
        if strategy == "block":
            block = w.get("block_structure")
            if not (isinstance(block, (list, tuple)) and len(block) == 2 and all(isinstance(x, int) and x > 0
                                                                                for x in block)):
                raise SpecError(f"{what}: block strategy needs block_structure [rows, cols], got {block!r}")
            return math.ceil(out / block[0]) * math.ceil(d_in / block[1])
        raise SpecError(f"{what}: weight strategy {strategy!r} is not modelled")

    def extra_bytes(self, tensors) -> int:
        return sum(self.extra_formats(tensors).values())

    def extra_formats(self, tensors) -> Dict[str, int]:
        if not self.kv:
            return {}
        o_proj = [t for t in tensors if t.name.endswith("attn.o_proj.weight")]
        return {f"{self.dtype} scales": sum(2 * t.copies * self.b for t in o_proj)}


# ---------------------------------------------------------------------------------------------
# the KV cache

KV_KINDS = ("attention", "sliding", "chunked", "mla", "indexer", "cross_attention", "linear_attention", "ssm")
"""The kinds of layer state :func:`kv_cache_bytes` breaks the cache into."""


@dataclass(frozen=True)
class KVCache:
    """What :func:`kv_cache_bytes` returns: ``total`` bytes for ``batch`` sequences of ``seq_len`` tokens,
    ``breakdown`` by :data:`KV_KINDS`, and, for MLA layers, the bytes of both forms: ``mla_latent``
    (the compressed latent engines with MLA kernels cache) and ``mla_expanded`` (full keys and values per
    head, what an implementation without them caches; ``transformers``' own DeepSeek code does)."""

    total: int
    seq_len: int
    batch: int
    bytes_per_element: int
    mla: str
    breakdown: Dict[str, int]
    mla_latent: int = 0
    mla_expanded: int = 0

    @property
    def per_sequence(self) -> int:
        return self.total // self.batch

    def as_dict(self) -> dict:
        return {"total": self.total, "seq_len": self.seq_len, "batch": self.batch,
                "bytes_per_element": self.bytes_per_element, "mla": self.mla, "breakdown": dict(self.breakdown),
                "mla_latent": self.mla_latent, "mla_expanded": self.mla_expanded}


def cached_tokens(a: Attention, T: int) -> int:
    """Positions one attention layer keeps after T tokens: all T, at most ``window`` for a sliding window,
    at most ``chunk`` for chunked attention (a query sees only its own chunk)."""
    if a.window:
        return min(T, a.window)
    if a.chunk:
        return min(T, a.chunk)
    return T


def attention_cache_elements(a: Attention, T: int, mla: str = "latent") -> Dict[str, int]:
    """Elements one attention layer caches for one sequence of T tokens, by kind: K and V of
    kv_heads x (head_dim + v_head_dim) per position kept (:func:`cached_tokens`); MLA, its latent of
    kv_lora_rank + rope_head_dim per position (``mla="latent"``) or its expanded keys and values of
    heads x (head_dim + v_head_dim) (``"expanded"``); an indexer, its key of index head_dim per position
    (every position: the indexer scores all of them). A layer that reads an earlier layer's keys and values
    (``kv_shared``, Gemma 4) or the keys an earlier indexer picked (a shared indexer) keeps nothing of its
    own. Values taken from the key projection (``values_from_keys``) are still cached beside the keys: the
    keys pass a norm and rotary embedding, the values do not."""
    n = cached_tokens(a, T)
    kind = "sliding" if a.window else "chunked" if a.chunk else "attention"
    out = {}
    if a.kv_shared:  # it reads the cache of the last earlier layer of its kind
        return out
    if a.mla:
        per = a.kv_lora_rank + a.rope_head_dim if mla == "latent" else a.heads * (a.head_dim + a.v_head_dim)
        out["mla"] = n * per
    else:
        out[kind] = n * a.kv_heads * (a.head_dim + a.v_head_dim)
    if a.indexer is not None and not a.indexer.shared:
        out["indexer"] = T * a.indexer.head_dim
    return out


def linear_attention_state(m: LinearAttention) -> int:
    """Elements of a gated DeltaNet layer's fixed state: a key_dim x value_dim matrix per value head, and
    the last conv - 1 inputs of each of its convolution's channels."""
    return m.heads * m.key_dim * m.value_dim + (m.conv - 1) * m.conv_channels


def mamba2_state(m: Mamba2) -> int:
    """Elements of a Mamba-2 layer's fixed state: head_dim x state per head, and the last conv - 1 inputs of
    each convolution channel (x, B and C)."""
    return m.heads * m.head_dim * m.state + (m.conv - 1) * m.conv_channels


def kv_cache_bytes(spec, seq_len: int, batch: int = 1, dtype: Union[str, int] = "bfloat16",
                   mla: str = "latent", encoder_len: Optional[int] = None) -> KVCache:
    """Bytes of the cache ``batch`` sequences of ``seq_len`` tokens keep while decoding, exactly.

    Per decoder layer and sequence (``dtype``: the cache's element type, 2 bytes by default; or a number
    of bytes per element): attention keeps K and V of kv_heads x (head_dim + v_head_dim) per position --
    GQA divides MHA's cache by heads / kv_heads; MLA keeps its latent, kv_lora_rank + rope_head_dim per
    position (``mla="expanded"``: heads x (head_dim + v_head_dim), as if it were MHA); a sliding-window
    layer keeps at most its window, a chunked layer at most its chunk; a sparse-attention indexer adds its
    key, index head_dim per position; a gated DeltaNet layer keeps heads x key_dim x value_dim plus its
    convolution's last conv - 1 inputs, a Mamba-2 layer heads x head_dim x state plus the same, whatever
    the length; cross-attention keeps the encoder's keys and values, ``encoder_len`` positions (default
    ``seq_len``). Encoder layers keep nothing (they run once over the input): an encoder-only model caches
    nothing. Runs of equal layers count once, times their length.

    Assumed: one cache entry per position and head, no padding, no paging overhead, no quantization scale
    tensors (an fp8 cache with per-tensor scales adds a few bytes per layer); recurrent states in the
    cache's dtype (engines often keep them in float32: pass ``dtype="float32"`` to see that)."""
    if not isinstance(spec, Transformer):
        raise SpecError(f"{_a(spec)} keeps no KV cache; expected a Transformer")
    _positive("kv_cache_bytes", "seq_len", seq_len)
    _positive("kv_cache_bytes", "batch", batch)
    if encoder_len is not None:
        _positive("kv_cache_bytes", "seq_len", encoder_len)
    if mla not in ("latent", "expanded"):
        raise SpecError(f"mla must be 'latent' or 'expanded', got {mla!r}")
    b = dtype_bytes(dtype, "KV-cache dtype")
    S = seq_len if encoder_len is None else encoder_len
    elements = {k: 0 for k in KV_KINDS}
    latent = expanded = 0
    for run in spec.blocks:  # the decoder; encoder layers cache nothing
        blk, r = run.block, run.repeat
        m = blk.mixer
        if isinstance(m, Attention):
            for k, v in attention_cache_elements(m, seq_len, mla).items():
                elements[k] += r * v
            if m.mla:
                n = cached_tokens(m, seq_len)
                latent += r * n * (m.kv_lora_rank + m.rope_head_dim)
                expanded += r * n * m.heads * (m.head_dim + m.v_head_dim)
        elif isinstance(m, LinearAttention):
            elements["linear_attention"] += r * linear_attention_state(m)
        elif isinstance(m, Mamba2):
            elements["ssm"] += r * mamba2_state(m)
        if blk.cross is not None:
            c = blk.cross
            elements["cross_attention"] += r * S * c.kv_heads * (c.head_dim + c.v_head_dim)
    breakdown = {k: v * b * batch for k, v in elements.items() if v}
    return KVCache(sum(breakdown.values()), seq_len, batch, b, mla, breakdown, latent * b * batch,
                   expanded * b * batch)


# ---------------------------------------------------------------------------------------------
# accelerators

@dataclass(frozen=True)
class Accelerator:
    """One accelerator of :data:`ACCELERATORS`: ``memory`` (bytes of HBM), ``bandwidth`` (HBM bytes/s) and
    ``peak`` (dense FLOP/s by compute dtype: ``bfloat16``, ``float8``), with the vendor ``sources`` they
    come from. Dense: vendors print the tensor-core peaks with 2:4 sparsity, twice these."""

    key: str
    name: str
    memory: int
    bandwidth: float
    peak: Dict[str, float]
    sources: Tuple[str, ...]
    note: str = ""
    aliases: Tuple[str, ...] = ()

    @property
    def ridge(self) -> float:
        """FLOPs per byte at which bf16 compute (or, on a machine with no bf16 peak, its fastest) and memory take
        equal time (the roofline's ridge point)."""
        return self.peak.get("bfloat16", max(self.peak.values())) / self.bandwidth


_DATA = Path(__file__).resolve().parent / "accelerators.json"


@lru_cache(maxsize=None)
def _accelerators() -> Dict[str, Accelerator]:
    raw = json.loads(_DATA.read_text(encoding="utf-8"))
    out = {}
    for key, d in raw["accelerators"].items():
        out[key] = Accelerator(key, d["name"], int(d["memory_bytes"]), float(d["hbm_bytes_per_s"]),
                               {k: float(v) for k, v in d["dense_flops"].items()}, tuple(d["sources"]),
                               d.get("note", ""), tuple(d.get("aliases", ())))
    return out


ACCELERATORS: Dict[str, Accelerator] = dict(_accelerators())
"""The accelerators the serving model knows, by key (``h100``, ``h200``, ``b200``, ``mi300x``), read from the
package's ``accelerators.json`` (each figure with its vendor source)."""


def accelerator(name: Union[str, Accelerator]) -> Accelerator:
    """The accelerator a name or alias names (case-insensitive: ``"H100"``, ``"h100-sxm"``), or one line
    with the closest names."""
    if isinstance(name, Accelerator):
        return name
    if not isinstance(name, str):
        raise SpecError(f"hardware must be a name, got {name!r}")
    key = name.strip().lower().replace(" ", "-").replace("_", "-")
    names = {}
    for k, a in ACCELERATORS.items():
        for n in (k, *a.aliases):
            names[n] = a
    if key in names:
        return names[key]
    close = list(dict.fromkeys(names[n].key for n in difflib.get_close_matches(key, list(names), n=4, cutoff=0.5)))
    hint = f" (did you mean {' or '.join(map(repr, close[:2]))}?)" if close else ""
    raise SpecError(f"unknown hardware {name!r}{hint}; known: {', '.join(ACCELERATORS)}")


# ---------------------------------------------------------------------------------------------
# decode and prefill on the roofline

@dataclass(frozen=True)
class Step:
    """One step of serving on ``devices`` accelerators: ``flops`` of arithmetic, ``weight_bytes`` of weights
    read and ``kv_bytes`` of cache read (decode) or written (prefill). Its time is the roofline's: the larger
    of ``compute_time`` (FLOPs over ``devices`` x peak) and ``memory_time`` (bytes over ``devices`` x
    bandwidth); ``bound`` says which. ``tokens`` are the tokens it produces (decode: one per sequence) or
    reads (prefill: the prompts)."""

    kind: str
    batch: int
    context: int
    tokens: int
    flops: float
    weight_bytes: float
    kv_bytes: float
    hardware: Accelerator
    compute: str
    devices: int = 1

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.kv_bytes

    @property
    def compute_time(self) -> float:
        return self.flops / (self.devices * self.hardware.peak[self.compute])

    @property
    def memory_time(self) -> float:
        return self.bytes / (self.devices * self.hardware.bandwidth)

    @property
    def time(self) -> float:
        return max(self.compute_time, self.memory_time)

    @property
    def bound(self) -> str:
        return "compute" if self.compute_time >= self.memory_time else "memory"

    @property
    def intensity(self) -> float:
        """FLOPs per byte moved."""
        return self.flops / self.bytes

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.time

    def as_dict(self) -> dict:
        return {"kind": self.kind, "hardware": self.hardware.key, "devices": self.devices, "batch": self.batch,
                "context": self.context, "tokens": self.tokens, "flops": self.flops,
                "weight_bytes": self.weight_bytes, "kv_bytes": self.kv_bytes, "bytes": self.bytes,
                "compute": self.compute, "compute_time_s": self.compute_time, "memory_time_s": self.memory_time,
                "time_s": self.time, "bound": self.bound, "tokens_per_second": self.tokens_per_second}


def _compute_dtype(spec, compute: Optional[str], hw: Accelerator) -> str:
    """The dtype whose peak prices the arithmetic: ``compute`` if given (one of ``hw.peak``'s, e.g. ``float32``
    for a CPU measured in fp32); else bf16 math unless the checkpoint quantizes activations to fp8 too (fp8 and
    ModelOpt FP8 schemes, compressed-tensors float input activations)."""
    chosen = compute if compute is not None else _default_compute(spec)
    if chosen not in hw.peak:
        known = ", ".join(repr(k) for k in hw.peak)
        raise SpecError(f"compute {chosen!r}: {hw.name} has a peak for {known} only")
    return chosen


def _default_compute(spec) -> str:
    q = spec.storage.quantization_config if isinstance(spec, Transformer) else None
    if not q:
        return "bfloat16"
    method = str(q.get("quant_method", "")).lower()
    if method == "fp8" or (method == "modelopt" and q.get("quant_algo") == "FP8"):
        return "float8"
    if method in ("compressed-tensors", "compressed_tensors"):
        acts = [g.get("input_activations") for g in (q.get("config_groups") or {}).values() if isinstance(g, dict)]
        if acts and all(isinstance(a, dict) and a.get("type") == "float" and a.get("num_bits") == 8 for a in acts):
            return "float8"
    return "bfloat16"


def _decoder(spec, context: Optional[int] = None) -> Transformer:
    if not isinstance(spec, Transformer):
        raise SpecError(f"{_a(spec)} does not decode; expected a Transformer")
    if not spec.blocks:
        raise SpecError("an encoder-only model does not decode tokens: it has no decoder")
    _check_positions(spec, context)
    return spec


def _check_positions(spec: Transformer, tokens: Optional[int]) -> None:
    if tokens is not None and spec.positions and tokens > spec.positions:
        raise SpecError(f"{tokens:,} tokens are more than the model's {spec.positions:,} learned positions")


def _last_token_keys(a: Attention, T: int) -> int:
    """Keys the last of T tokens attends to: all T, its window, the part of its chunk up to it, or the
    indexer's top_k."""
    if a.window:
        keys = min(T, a.window)
    elif a.chunk:
        keys = (T - 1) % a.chunk + 1
    else:
        keys = T
    if a.indexer is not None:
        keys = min(keys, a.indexer.top_k)
    return keys


def decode_flops(spec, context: int, mla: str = "latent") -> float:
    """Forward FLOPs of one decode step for one sequence whose last token is token ``context``: every
    decoder layer's projections and FFN (an MoE's k experts and router), its attention over the keys that
    token sees (all of them, its window, its chunk so far, or the indexer's top_k), cross-attention's query
    and output over ``context`` encoder positions, and the LM head. With ``mla="latent"`` an MLA layer
    attends in its latent space (weight absorption: 2 x heads x (kv_lora_rank + rope_head_dim) for a score
    and 2 x heads x kv_lora_rank for the value part, per key; the absorbed projections cost what kv_b_proj
    would); ``"expanded"``, as MHA."""
    s = _decoder(spec)
    D = s.width
    total = 2 * D * s.vocab + (2 * D * D if s.head_transform else 0)
    if s.per_layer_input:  # Gemma 4: the embedding projected to L x P, then a gate and a projection per layer
        total += 2 * D * s.layers * s.per_layer_input + s.layers * 4 * D * s.per_layer_input
    for run in s.blocks:
        b, n = run.block, 0
        m = b.mixer
        if isinstance(m, Attention):
            keys = _last_token_keys(m, context)
            n += attention_projection_flops(D, m)
            if m.mla and mla == "latent":
                n += 2 * m.heads * keys * (2 * m.kv_lora_rank + m.rope_head_dim)
            else:
                n += attention_score_flops(m, keys)
            if m.indexer is not None and not m.indexer.shared:
                n += indexer_score_flops(m, context)
        elif m is not None:
            n += mixer_flops(D, m, context)
        if b.cross is not None:
            c = b.cross
            n += 2 * D * c.heads * c.head_dim * (2 if c.gate == "channel" else 1) + 2 * c.heads * c.v_head_dim * D
            n += 2 * D * c.heads if c.gate == "head" else 0
            n += attention_score_flops(c, context)
        if isinstance(b.ffn, FFN):
            n += ffn_flops(D, b.ffn)
        elif isinstance(b.ffn, MoE):
            n += moe_flops(D, b.ffn)
        total += run.repeat * n
    return total


def weight_bytes_read(spec, tokens: int = 1, *, weights: Optional[WeightBytes] = None, decoding: bool = True) -> float:
    """Bytes of weights, as the checkpoint stores them (:func:`weight_bytes`, or ``weights``), that one step
    over ``tokens`` tokens reads: every tensor once, but of each MoE layer's routed experts only the distinct
    experts the tokens reach under uniform routing, of an untied embedding only the rows read, and, decoding an
    encoder-decoder, none of the encoder's. ``tokens=1``: what one token reads (chapter "What FLOPs don't
    count"); :func:`decode_step` reads this for its batch."""
    s = _decoder(spec) if decoding else spec
    _positive("weight_bytes_read", "tokens", tokens)
    return _read_bytes(s, weights if weights is not None else weight_bytes(s), tokens, decoding)


def _read_bytes(spec, wb: WeightBytes, tokens: int, decoding: bool) -> float:
    """Weight bytes one step reads for ``tokens`` tokens: every tensor once, but of each MoE layer's routed
    experts only the distinct experts the tokens reach (:func:`whatruns.count.experts_touched`, uniform
    routing), of an untied input embedding (and position table) only the rows read, and, decoding an
    encoder-decoder, none of the encoder's."""
    moe = {}
    for name, stack in spec.stacks:
        start = 0
        for run in stack:
            if isinstance(run.block.ffn, MoE):
                moe[(name, start, start + run.repeat)] = run.block.ffn
            start += run.repeat
    total = 0.0
    for t, b in wb.entries:
        if decoding and t.stack == "encoder":
            continue
        if t.role == "embedding" and (not spec.tied or t.name != "model.embed_tokens.weight"):
            rows = t.shape[0]
            total += b * min(tokens, rows) / rows
        elif t.expert:
            f = moe[(t.stack, *t.layers)]
            total += b * experts_touched(f.experts, f.top_k, tokens) / f.experts
        else:
            total += b
    return total


def decode_step(spec, hardware="h100", batch: int = 1, context: int = 4096, *, kv_dtype="bfloat16",
                mla: str = "latent", compute: Optional[str] = None, devices: int = 1,
                weights: Optional[WeightBytes] = None) -> Step:
    """The roofline time of one decode step: ``batch`` sequences each add one token, the last of
    ``context`` tokens, on ``devices`` accelerators named by ``hardware`` (:func:`accelerator`).

    FLOPs: ``batch`` x :func:`decode_flops`. Bytes: the weights the step reads -- as stored
    (:func:`weight_bytes`, or ``weights``), all the dense ones and, of each MoE layer, the distinct experts
    ``batch`` tokens reach under uniform routing (E(1 - (1 - k/E)^B), :func:`whatruns.count.experts_touched`)
    -- plus the whole KV cache, ``kv_cache_bytes(spec, context, batch, kv_dtype, mla)``.

    Assumptions: the step is as fast as the slower of arithmetic at the dense peak of ``compute`` (bf16 by
    default; fp8 when the checkpoint quantizes activations to fp8 as DeepSeek-V3's does) and memory at full
    HBM bandwidth -- no kernel reaches either, so real steps are slower; every byte is read once per step
    (no cache reuse, no re-reads); activations, the cache writes of the new tokens and the states' updates
    are not counted; weight-only formats (MXFP4 on Hopper, int4) compute in bf16 after dequantizing, at no
    cost; routing is uniform (a trained router's load is uneven, touching fewer experts); ``devices``
    share weights, cache, FLOPs and bandwidth perfectly (ideal tensor parallelism: no communication)."""
    s = _decoder(spec, context)
    _positive("decode_step", "batch", batch)
    _positive("decode_step", "seq_len", context)
    _positive("decode_step", "devices", devices)
    hw = accelerator(hardware)
    wb = weights if weights is not None else weight_bytes(s)
    kv = kv_cache_bytes(s, context, batch, kv_dtype, mla).total
    return Step("decode", batch, context, batch, batch * decode_flops(s, context, mla), _read_bytes(s, wb, batch, True),
                kv, hw, _compute_dtype(s, compute, hw), devices)


def prefill(spec, hardware="h100", batch: int = 1, prompt: int = 4096, *, kv_dtype="bfloat16", mla: str = "latent",
            compute: Optional[str] = None, devices: int = 1, weights: Optional[WeightBytes] = None) -> Step:
    """The roofline time of prefilling ``batch`` prompts of ``prompt`` tokens in one step.

    FLOPs: ``batch`` x ``prompt`` x ``count(spec, prompt, causal=True).flops_per_token`` (each query pays for
    the keys it sees; MLA computed expanded, as prefill kernels do). Bytes: the weights once (of each MoE
    layer the experts ``batch`` x ``prompt`` tokens reach: all of them, for any real prompt) plus the KV
    cache written, ``kv_cache_bytes(spec, prompt, batch)``. The assumptions of :func:`decode_step` hold;
    also, attention's intermediate scores are never written to memory (a fused, flash-style kernel)."""
    if not isinstance(spec, Transformer):
        raise SpecError(f"{_a(spec)} has no prompt to prefill; expected a Transformer")
    _check_positions(spec, prompt)
    _positive("prefill", "batch", batch)
    _positive("prefill", "seq_len", prompt)
    _positive("prefill", "devices", devices)
    hw = accelerator(hardware)
    wb = weights if weights is not None else weight_bytes(spec)
    flops = batch * prompt * count(spec, seq_len=prompt, causal=True).flops_per_token
    kv = kv_cache_bytes(spec, prompt, batch, kv_dtype, mla).total if spec.blocks else 0
    return Step("prefill", batch, prompt, batch * prompt, flops, _read_bytes(spec, wb, batch * prompt, False), kv, hw,
                _compute_dtype(spec, compute, hw), devices)


# ---------------------------------------------------------------------------------------------
# what fits

def memory_needed(spec, batch: int, context: int, kv_dtype="bfloat16", mla: str = "latent",
                  weights: Optional[WeightBytes] = None) -> int:
    """Bytes a server holds to decode ``batch`` sequences of ``context`` tokens: the weights as stored and
    their KV caches. Not counted: activations, the runtime's own memory, fragmentation (pass a ``reserve``
    to :func:`max_batch` and :func:`max_context` for them)."""
    wb = weights if weights is not None else weight_bytes(spec)
    return wb.total + kv_cache_bytes(spec, context, batch, kv_dtype, mla).total


def _capacity(hardware, devices: int, reserve: int) -> int:
    hw = accelerator(hardware)
    _positive("memory", "devices", devices)
    if isinstance(reserve, bool) or not isinstance(reserve, int) or reserve < 0:
        raise SpecError(f"reserve must be a non-negative number of bytes, got {reserve!r}")
    return hw.memory * devices - reserve


def max_batch(spec, hardware, context: int, devices: int = 1, kv_dtype="bfloat16", mla: str = "latent",
              reserve: int = 0, weights: Optional[WeightBytes] = None) -> int:
    """The most sequences of ``context`` tokens whose caches fit beside the weights in ``devices``
    accelerators' memory less ``reserve`` bytes; 0 when the weights alone do not fit."""
    room = _capacity(hardware, devices, reserve) - (weights or weight_bytes(spec)).total
    if room < 0:
        return 0
    per = kv_cache_bytes(spec, context, 1, kv_dtype, mla).total
    return room // per if per else BOUNDS["positions"]


def max_context(spec, hardware, batch: int = 1, devices: int = 1, kv_dtype="bfloat16", mla: str = "latent",
                reserve: int = 0, weights: Optional[WeightBytes] = None) -> Optional[int]:
    """The longest context ``batch`` sequences can reach before their caches outgrow the memory left beside
    the weights: 0 when not even one token fits, None when the cache stops growing (sliding windows,
    chunks and recurrent states only) and fits at any length."""
    room = _capacity(hardware, devices, reserve) - (weights or weight_bytes(spec)).total

    def fits(T):
        return kv_cache_bytes(spec, T, batch, kv_dtype, mla).total <= room
    if room < 0 or not fits(1):
        return 0
    top = BOUNDS["positions"]
    if fits(top):
        grows = kv_cache_bytes(spec, top, batch, kv_dtype, mla).total > kv_cache_bytes(spec, top // 2, batch,
                                                                                        kv_dtype, mla).total
        return top if grows else None
    lo, hi = 1, top  # fits(lo), not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def check_fits(spec, hardware, batch: int, context: int, devices: int = 1, kv_dtype="bfloat16",
               mla: str = "latent", reserve: int = 0, weights: Optional[WeightBytes] = None) -> int:
    """The bytes ``batch`` sequences of ``context`` tokens need (:func:`memory_needed`), or a one-line
    :class:`~whatruns.spec.SpecError` saying by how much they do not fit and what would."""
    from .units import human_bytes as human
    hw = accelerator(hardware)
    wb = weights or weight_bytes(spec)
    need = memory_needed(spec, batch, context, kv_dtype, mla, wb)
    have = _capacity(hw, devices, reserve)
    if need <= have:
        return need
    where = f"{devices} x {hw.name}" if devices > 1 else f"one {hw.name}"
    if wb.total > have:
        raise SpecError(f"does not fit: the weights alone are {human(wb.total)}, {where} holds {human(have)}; "
                        f"use more devices (at least {math.ceil((wb.total + reserve) / hw.memory)})")
    kv = need - wb.total
    b = max_batch(spec, hw, context, devices, kv_dtype, mla, reserve, wb)
    raise SpecError(f"does not fit: {batch} sequences of {context:,} tokens need {human(need)} (weights "
                    f"{human(wb.total)} + KV cache {human(kv)}), {where} holds {human(have)}; at {context:,} "
                    f"tokens at most {b:,} sequences fit")


def devices_needed(spec, hardware, batch: int = 1, context: int = 4096, kv_dtype="bfloat16", mla: str = "latent",
                   reserve: int = 0, weights: Optional[WeightBytes] = None) -> int:
    """The fewest accelerators whose memory (less ``reserve`` bytes in all) holds the weights as stored and
    ``batch`` caches of ``context`` tokens (:func:`memory_needed`), the model split evenly across them."""
    hw = accelerator(hardware)
    need = memory_needed(spec, batch, context, kv_dtype, mla, weights) + reserve
    return max(1, math.ceil(need / hw.memory))


def kv_crossover(spec, context: int, kv_dtype="bfloat16", mla: str = "latent",
                 weights: Optional[WeightBytes] = None) -> int:
    """The smallest batch at which a decode step at ``context`` reads more bytes of KV cache than of weights:
    B x ``kv_cache_bytes(spec, context)`` >= the weights B tokens read (of an MoE, the experts they reach, so
    the weight side grows with B too, up to all of them). Below it the weights dominate a step's bytes, above
    it the cache does."""
    s = _decoder(spec)
    wb = weights if weights is not None else weight_bytes(s)
    per = kv_cache_bytes(s, context, 1, kv_dtype, mla).total
    if per == 0:
        raise SpecError("this model keeps no cache, so the cache never outweighs the weights")

    def cache_wins(B):
        return B * per >= _read_bytes(s, wb, B, True)
    hi = 1
    while not cache_wins(hi):
        hi *= 2
        if hi > 2 ** 62:  # pragma: no cover - the weights are finite and the cache grows with B
            raise SpecError("the cache never outweighs the weights")
    lo = hi // 2  # not cache_wins(lo) unless lo == 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if cache_wins(mid) else (mid, hi)
    return hi
