"""Hugging Face ``config.json`` -> :class:`~whatruns.spec.Transformer`.

:func:`load` takes a catalog name, a path to a ``config.json`` (or a folder holding one) or a
config dict; :func:`from_hf` reads a Hugging Face config dict.

The rule this module follows: **read every field the way ``transformers`` (5.24) reads it**, in
its config class *and* in its modeling code, defaults included. The count of the spec it returns
is then exactly the number of parameters ``transformers`` instantiates for the config (the tests
hold it to that, on the meta device). Where the two places disagree, the modeling code wins,
because it is what builds the weights. A few examples of what that means:

* ``head_dim`` -- Llama and Mistral derive it as ``hidden_size // num_attention_heads`` when it is
  absent; Qwen3, gpt-oss and Llama 4 default to a fixed 128, 64 and 128 instead; Qwen2 and the
  Qwen MoE classes have no such field but their attention reads one if the file has it.
* defaults that are not the obvious ones -- ``num_key_value_heads`` is 8 for Mistral when absent
  (not the number of heads), 32 for Qwen2; GPT-2 ties its embeddings, Llama does not.
* biases -- Qwen2 has them on q, k, v but not on the output projection; Llama's
  ``attention_bias`` covers the output projection too; Mistral has none whatever the file says.
* which layers are MoE -- ``decoder_sparse_step`` and ``mlp_only_layers`` (Qwen MoE),
  ``first_k_dense_replace`` (DeepSeek; ``moe_layer_freq`` is not read by ``transformers``),
  ``moe_layers`` / ``interleave_moe_layer_step`` (Llama 4), the sparse-step arithmetic of the
  Switch Transformer (every other layer; see ``_switch_sparse``).

What a config must hold: the sizes that say which model it is -- vocabulary, width, layers,
heads, FFN and expert widths, number of experts -- must be present, even where ``transformers``
would fill in a default (a file without ``hidden_size`` describes no particular model).
Everything else (key/value heads, ``head_dim``, top-k, flags, ...) takes the class default.
A size must be a JSON integer (``4096``; not ``4096.0``, ``"4096"`` or ``true``, which
``transformers``' strict config classes refuse too) and positive. A flag must be ``true`` or ``false``.

Bad input raises :class:`~whatruns.spec.SpecError` with a one-line message.

Attention patterns that change FLOPs but not parameters -- sliding windows, Llama 4's chunked layers -- are
carried into each layer's ``Attention.window`` / ``chunk``; what changes neither but the function (rope, norms'
eps and form, softmax scales, soft-caps, routers' details, clamps) into the spec's function fields, model type
by model type (:data:`FUNCTIONS`, ``_model_function``): ``whatruns.weights.from_transformers`` then gives
transformers' logits (tests/test_weights.py).
"""

from __future__ import annotations

import difflib
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from .spec import (BOUNDS, FFN, ROPE_SCALINGS, MoE, Attention, Block, Indexer, LinearAttention, Mamba2, Norm, Rope,
                   Run, SpecError, Storage, Transformer, from_dict, runs)

__all__ = ["load", "resolve", "from_hf", "text_model", "storage", "rope_from", "SUPPORTED", "WRAPPERS", "FUNCTIONS",
           "Wrapper", "Function"]

_REQUIRED = object()  # a size with no default: it must be in the config
_ABSENT = object()


# ---------------------------------------------------------------------------------------------
# entry points

def load(source):
    """A spec from a catalog name, a path to a ``config.json`` (or a folder holding one), a Hugging Face
    Hub id (``"deepseek-ai/DeepSeek-V3"``, read through ``huggingface_hub`` and its cache: see
    :mod:`whatruns.hub`), or a config dict. How a string is read: :func:`resolve`.

    * a dict with a ``"whatruns"`` key is the library's own format (:func:`whatruns.spec.from_dict`);
    * a dict with a ``"model_type"`` key is a Hugging Face config (:func:`from_hf`); a multimodal or
      wrapper config is counted as its text model (:func:`text_model`).
    """
    if isinstance(source, dict):
        return _from_any_dict(source, "config")
    if isinstance(source, (str, os.PathLike)) and not isinstance(source, bytes):
        config, where = resolve(os.fspath(source))
        return _from_any_dict(config, where)
    raise SpecError(f"cannot load a {type(source).__name__}: give a catalog name, a path to a config.json, "
                    "a Hugging Face Hub id, or a dict")


def resolve(source: str):
    """The config dict a string names, and where it came from, tried in this order: an existing file or
    folder; a catalog name (case-insensitive); a Hub id (``owner/name``); else an error -- "no such file"
    for what looks like a path, "unknown catalog model" (with the closest names) for the rest."""
    if os.path.exists(source):
        return read_json(Path(source)), source
    try:  # imported here: the catalog itself reads configs through this module
        from . import catalog
    except ModuleNotFoundError as e:  # pragma: no cover - the package always ships its catalog
        if e.name != f"{__package__}.catalog":
            raise
        catalog = None
    key = source.strip().lower()
    if catalog is not None and key in catalog.names():
        return catalog.config(key), f"catalog entry {key!r}"
    from . import hub
    if hub.looks_like_hub_id(source):
        return read_json(Path(hub.config_path(source))), f"{source} (Hugging Face Hub)"
    if source.endswith(".json") or os.sep in source or "/" in source or source.startswith(("~", ".")):
        raise SpecError(f"{source}: no such file")
    if catalog is None:  # pragma: no cover
        raise SpecError(f"{source!r} is not a file, and there is no catalog to look it up in")
    catalog.entry(source)  # raises: unknown catalog model, with the closest names
    raise AssertionError(source)  # pragma: no cover


def read_json(path: Path) -> dict:
    """The JSON object in a file (or in a folder's ``config.json``), or a one-line :class:`SpecError`."""
    if path.is_dir():
        path = path / "config.json"
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise SpecError(f"{path}: {path.stat().st_size:,} bytes, too large for a config "
                            f"(at most {MAX_CONFIG_BYTES:,})")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: cannot read it ({type(e).__name__}: {e})".replace("\n", " ")) from None
    return parse_json(text, str(path))


MAX_CONFIG_BYTES = 16 * 2 ** 20
"""The largest config file read (published configs are a few kB; layer lists of a deep model, tens)."""


def parse_json(text: str, where: str) -> dict:
    """The JSON object in ``text`` (read from ``where``), or a one-line :class:`SpecError`: malformed JSON,
    nesting too deep to parse, or a number too long to read are input errors like any other."""
    if len(text) > MAX_CONFIG_BYTES:
        raise SpecError(f"{where}: {len(text):,} characters, too large for a config (at most {MAX_CONFIG_BYTES:,})")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError(f"{where}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise SpecError(f"{where}: JSON nested too deeply to be a config") from None
    except ValueError as e:  # e.g. an integer of more than 4,300 digits
        raise SpecError(f"{where}: cannot read its JSON ({' '.join(str(e).split()[:12])})") from None
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a JSON object, got {_json_type(data)}")
    return data


def _json_type(x) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
            type(None): "null"}.get(type(x), type(x).__name__)


def _from_any_dict(d, where: str):
    if not isinstance(d, dict):
        raise SpecError(f"{where}: expected a JSON object, got {_json_type(d)}")
    if "whatruns" in d:
        return from_dict(d)
    return from_hf(d)


def text_model(config: dict):
    """``(text config, wrapper model_type)`` for a multimodal or wrapper config -- one whose
    ``model_type`` is not a text model whatruns reads and that holds a ``text_config`` (Llama 4, Kimi K2.5,
    Qwen3-VL, Qwen3.5, Gemma 3 and 4, LLaVA-style models) -- else ``(config, None)``. The text config
    inherits the wrapper's ``_name_or_path``; a text config without a ``model_type`` gets its wrapper's
    default text model type, and where the wrapper's class holds the LM head, its tie flag
    (:data:`WRAPPERS`)."""
    mt = config.get("model_type")
    inner = config.get("text_config")
    if mt in WRAPPERS and "text_config" not in config:
        raise SpecError(f"{mt} config: no text_config (transformers would build its default text model, not "
                        "the one this file describes)")
    if mt in SUPPORTED or not isinstance(mt, str) or "text_config" not in config:
        return config, None
    if not isinstance(inner, dict):
        raise SpecError(f"{mt} config: text_config must be an object, got {_json_type(inner)}")
    inner = dict(inner)
    wrapper = WRAPPERS.get(mt)
    if wrapper is not None and wrapper.force_text_type:
        inner["model_type"] = wrapper.text_type
    if "model_type" not in inner:
        if wrapper is None:
            raise SpecError(f"{mt} config: its text_config has no model_type, and whatruns does not know "
                            f"the text model of a {mt!r} wrapper")
        inner["model_type"] = wrapper.text_type
    if wrapper is not None:
        if wrapper.tie_from_wrapper:
            inner["tie_word_embeddings"] = config.get("tie_word_embeddings", wrapper.tie_default)
        for key, value in wrapper.text_defaults:
            inner.setdefault(key, value)
        for key, value in wrapper.text_overrides:
            inner[key] = value
    for key in ("_name_or_path", "name"):
        if config.get(key) and not inner.get(key):
            inner[key] = config[key]
    if not inner.get("_name_or_path") and not inner.get("name"):
        inner["name"] = mt  # the model is named by its wrapper's type, as an unnamed config by its own
    return inner, mt


def from_hf(config: dict) -> Transformer:
    """A :class:`~whatruns.spec.Transformer` from a Hugging Face config dict (the contents of a
    ``config.json``), for the model types in :data:`SUPPORTED`; a wrapper config as its text model
    (:func:`text_model`)."""
    if not isinstance(config, dict):
        raise SpecError(f"a Hugging Face config must be a JSON object, got {_json_type(config)}")
    mt = config.get("model_type", _ABSENT)
    supported = ", ".join(sorted(SUPPORTED))
    if mt is _ABSENT:
        raise SpecError(f"config has no model_type; supported model types: {supported}")
    if not isinstance(mt, str):
        raise SpecError(f"unknown model_type {mt!r}; supported model types: {supported}")
    text, wrapper = text_model(config)
    inner = text.get("model_type")
    if inner not in SUPPORTED:
        hint = _did_you_mean(inner)
        if wrapper is not None:
            raise SpecError(f"{wrapper} config: its text model has model_type {inner!r}, which whatruns does not "
                            f"read{hint}; supported model types: {supported}")
        raise SpecError(f"unknown model_type {inner!r}{hint}; supported model types: {supported}")
    try:
        spec = _with_function(SUPPORTED[inner](text), text, inner)
        return replace(spec, storage=storage(config))
    except SpecError as e:
        msg, owner = str(e), f"{inner} config"
        if wrapper is not None:
            msg = f"{wrapper} config: text_config: {msg[len(owner) + 2:] if msg.startswith(owner) else msg}"
        elif not msg.startswith(owner):
            msg = f"{owner}: {msg}"
        raise SpecError(msg) from None


_DTYPE_NAMES = {"float32": "float32", "float": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
                "float16": "float16", "half": "float16", "fp16": "float16"}


def storage(config: dict) -> Storage:
    """How the config says its checkpoint stores the weights: ``torch_dtype`` (or ``dtype``, the name
    transformers 5 writes) and ``quantization_config``, as they are (a wrapper's or, failing that, its
    text_config's). Read for serving bytes only: a value this does not understand is kept for
    :func:`whatruns.serve.weight_bytes` to refuse, never an error when counting."""
    dtype = None
    for d in (config, config.get("text_config") if isinstance(config.get("text_config"), dict) else {}):
        for key in ("torch_dtype", "dtype"):
            if isinstance(d.get(key), str) and dtype is None:
                dtype = _DTYPE_NAMES.get(d[key])
    q = config.get("quantization_config")
    if q is None and isinstance(config.get("text_config"), dict):
        q = config["text_config"].get("quantization_config")
    if q is not None and not isinstance(q, dict):
        q = {"quant_method": repr(q)}  # kept, so that serving bytes can refuse it by name
    return Storage.of(dtype, q)


def _did_you_mean(model_type) -> str:
    if not isinstance(model_type, str):
        return ""
    lower = model_type.strip().lower().replace("-", "_")
    if lower in SUPPORTED:
        return f" (did you mean {lower!r}? model types are lower case)"
    close = difflib.get_close_matches(lower, list(SUPPORTED), n=2, cutoff=0.75)
    return f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""


# ---------------------------------------------------------------------------------------------
# reading fields the way transformers' strict config classes accept them

class _Config:
    """A config dict read with the names, aliases (``attribute_map``) and defaults of one
    ``transformers`` config class. Every read checks the JSON type."""

    def __init__(self, d: dict, where: str, aliases: Optional[Dict[str, object]] = None):
        self.d = d
        self.where = where
        # field -> its other name(s) in attribute_map; a file that gives two names two values is refused
        # (transformers takes the alias's; whatruns will not guess which the author meant)
        self.aliases = {k: (v,) if isinstance(v, str) else tuple(v) for k, v in (aliases or {}).items()}

    def error(self, msg: str) -> SpecError:
        return SpecError(f"{self.where}: {msg}")

    def _names(self, key: str):
        return [n for n in (key, *self.aliases.get(key, ())) if n in self.d]

    def has(self, key: str) -> bool:
        return bool(self._names(key))

    def raw(self, key: str, default=_ABSENT):
        names = self._names(key)
        for other in names[1:]:
            if self.d[other] != self.d[names[0]]:
                raise self.error(f"{names[0]} ({_short_repr(self.d[names[0]])}) and its alias {other} "
                                 f"({_short_repr(self.d[other])}) disagree")
        return self.d[names[0]] if names else default

    def size(self, key: str, default=_REQUIRED, zero_ok: bool = False, none: bool = False):
        """An integer field: positive (or non-negative with ``zero_ok``), or None if ``none``."""
        v = self.raw(key)
        if v is _ABSENT:
            if default is _REQUIRED:
                raise self.error(f"{key} is missing")
            v = default
        if v is None and none:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error(f"{key} must be an integer, got {_short_repr(v)}")
        if v < 0 or (v == 0 and not zero_ok):
            raise self.error(f"{key} must be {'non-negative' if zero_ok else 'positive'}, got {_short_repr(v)}")
        kind = _bound_kind(key)
        if v > BOUNDS[kind]:
            raise self.error(f"{key} {_short_repr(v)} is beyond the bound {BOUNDS[kind]:,} for "
                             f"{'a width or size' if kind == 'width' else kind}: no model is that large")
        return v

    def flag(self, key: str, default: bool) -> bool:
        v = self.raw(key, default)
        if not isinstance(v, bool):
            raise self.error(f"{key} must be true or false, got {v!r}")
        return v

    def int_list(self, key: str, default):
        v = self.raw(key, default)
        if v is None:
            return None
        if not isinstance(v, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in v):
            raise self.error(f"{key} must be a list of integers, got {v!r}")
        return v

    def name(self, model_type: str) -> str:
        for key in ("_name_or_path", "name"):
            v = self.d.get(key)
            if isinstance(v, str) and v:
                return v
        return model_type


def _bound_kind(key: str) -> str:
    """Which of :data:`whatruns.spec.BOUNDS` bounds a config field, from its name."""
    k = key.lower()
    if "vocab" in k:
        return "vocab"
    if "layer" in k and not any(w in k for w in ("size", "dim", "input")):
        return "layers"
    if ("expert" in k and ("num" in k or k.startswith("n_") or "per_tok" in k)) or "top_k" in k:
        return "experts"
    if "head" in k and "dim" not in k and "size" not in k:
        return "heads"
    if any(w in k for w in ("position", "window", "chunk", "bucket")):
        return "positions"
    return "width"


def _short_repr(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else f"{text[:12]}... ({len(text)} characters)"


_ACTIVATIONS = {  # transformers' ACT2FN name -> whatruns'
    "silu": "silu", "swish": "silu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
    "relu": "relu", "relu2": "relu2",
}


def _activation(c: _Config, key: str, default: str) -> str:
    v = c.raw(key, default)
    if not isinstance(v, str) or v not in _ACTIVATIONS:
        raise c.error(f"{key} {v!r} is not one whatruns models ({', '.join(_ACTIVATIONS)})")
    return _ACTIVATIONS[v]


def _kv_heads(c: _Config, heads: int, default, nullable: bool = True) -> int:
    """``num_key_value_heads``: absent -> the class default; ``null`` -> the number of heads where
    the class allows null and replaces it (Llama, Qwen2, Qwen3, DeepSeek), an error elsewhere."""
    kv = c.raw("num_key_value_heads", default)
    if kv is None and nullable:
        return heads
    kv = c.size("num_key_value_heads", default)
    if heads % kv:
        raise c.error(f"num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv})")
    return kv


def _derived_head_dim(c: _Config, width: int, heads: int, width_key: str = "hidden_size",
                      heads_key: str = "num_attention_heads") -> int:
    if width % heads:
        raise c.error(f"{width_key} ({width}) must be a multiple of {heads_key} ({heads})")
    return width // heads


def _head_dim(c: _Config, width: int, heads: int, default, nullable: bool = True) -> int:
    """``head_dim`` when the file gives it, else ``default``: an int, or None for derived
    (``hidden_size // num_attention_heads``, which must then divide exactly). An explicit ``null``
    derives it too where the class allows null, and is an error where it does not."""
    v = c.raw("head_dim", _ABSENT)
    if v is _ABSENT:
        v = default
    elif v is None and not nullable:
        raise c.error("head_dim must be an integer, got None")
    if v is None:
        return _derived_head_dim(c, width, heads)
    return c.size("head_dim", v)


def _floor_head_dim(c: _Config, D: int, H: int, derive_if_falsy: bool = False) -> int:
    """``head_dim`` when the file gives it, else ``hidden_size // num_attention_heads`` rounded down, with no
    check that it divides (GLM-4.5, Qwen3-VL); ``derive_if_falsy``: null and 0 derive it too (Qwen3-VL's
    ``head_dim or ...``)."""
    v = c.raw("head_dim", None if derive_if_falsy else _ABSENT)
    if v is _ABSENT or (derive_if_falsy and v in (None, 0) and not isinstance(v, bool)):
        if D // H == 0:
            raise c.error(f"hidden_size // num_attention_heads is 0 ({D} // {H}): no head_dim")
        return D // H
    return c.size("head_dim")


def _top_k(c: _Config, key: str, experts: int, default=_REQUIRED, experts_key: str = "num_experts") -> int:
    k = c.size(key, default)
    if k > experts:
        raise c.error(f"{key} ({k}) cannot exceed the number of experts, {experts_key} ({experts})")
    return k


def _layer_types(c: _Config, layers: int, default: List[str]) -> List[str]:
    v = c.raw("layer_types", None)
    if v is None:
        return default
    if not isinstance(v, list) or not all(isinstance(t, str) for t in v):
        raise c.error(f"layer_types must be a list of strings, got {v!r}")
    if len(v) != layers:
        raise c.error(f"layer_types has {len(v)} entries for {layers} layers")
    return v


def _window(c: _Config, value, sliding: List[int]):
    """(sliding_window, sliding_layers) for the spec; the window only matters on sliding layers."""
    if value is None or not sliding:
        return 0, ()
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise c.error(f"sliding_window must be a positive integer or null, got {value!r}")
    return value, tuple(sliding)


def _sliding_window_value(c: _Config, default):
    v = c.raw("sliding_window", default)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
        raise c.error(f"sliding_window must be a positive integer or null, got {v!r}")
    return v


# ---------------------------------------------------------------------------------------------
# one reader per model type

def _gpt2(d: dict) -> Transformer:
    """GPT-2: learned positions (``n_positions``), LayerNorm with bias, biases on every
    projection (Conv1D), an ungated FFN of ``n_inner`` (default 4·D), tied embeddings."""
    c = _Config(d, "gpt2 config", {"n_embd": "hidden_size", "n_positions": "max_position_embeddings",
                                   "n_head": "num_attention_heads", "n_layer": "num_hidden_layers"})
    D = c.size("n_embd")
    H = c.size("n_head")
    if c.flag("add_cross_attention", False):
        raise c.error("add_cross_attention (a GPT-2 used as a decoder with cross-attention) is not supported")
    inner = c.size("n_inner", None, none=True)
    return Transformer(
        vocab=c.size("vocab_size"), width=D, layers=c.size("n_layer"),
        attention=Attention(heads=H, kv_heads=H, head_dim=_derived_head_dim(c, D, H, "n_embd", "n_head"),
                            bias=True, out_bias=True),
        ffn=FFN(4 * D if inner is None else inner, gated=False, bias=True,
                activation=_activation(c, "activation_function", "gelu_new")),
        norm=Norm("layernorm", bias=True), tied=c.flag("tie_word_embeddings", True),
        positions=c.size("n_positions", 1024), name=c.name("gpt2"))


def _llama_like(d: dict, model_type: str) -> Transformer:
    """Llama, Mistral, Qwen2, Qwen3: dense, RMSNorm, gated SiLU FFN; they differ in biases,
    head_dim and key/value-head defaults, QK-norm and sliding windows."""
    c = _Config(d, f"{model_type} config")
    D, H, L = c.size("hidden_size"), c.size("num_attention_heads"), c.size("num_hidden_layers")
    if model_type == "llama":
        _derived_head_dim(c, D, H)  # LlamaConfig.validate_architecture insists, even with a head_dim
        dh = _head_dim(c, D, H, None)
        kv = _kv_heads(c, H, None)
        bias = out_bias = c.flag("attention_bias", False)
        ffn_bias = c.flag("mlp_bias", False)
        qk_norm = None
        window, sliding = None, []
    elif model_type == "mistral":
        dh = _head_dim(c, D, H, None)
        kv = _kv_heads(c, H, 8, nullable=False)
        bias = out_bias = ffn_bias = False  # no bias whatever the file says
        qk_norm = None
        window = _sliding_window_value(c, 4096)
        sliding = list(range(L))  # MistralModel uses the sliding mask on every layer
    elif model_type in ("qwen2", "qwen3"):
        if model_type == "qwen2":
            dh = _head_dim(c, D, H, None, nullable=False)  # not a Qwen2Config field, but the attention reads it
            bias, out_bias, qk_norm = True, False, None
        else:
            dh = _head_dim(c, D, H, 128, nullable=False)
            bias = out_bias = c.flag("attention_bias", False)
            qk_norm = "head"
        ffn_bias = False
        kv = _kv_heads(c, H, 32)
        use = c.flag("use_sliding_window", False)
        window = _sliding_window_value(c, 4096) if use else None
        max_window = c.size("max_window_layers", 28, zero_ok=True)
        types = _layer_types(c, L, ["sliding_attention" if window is not None and i >= max_window
                                    else "full_attention" for i in range(L)])
        sliding = [i for i, t in enumerate(types) if t == "sliding_attention"]
    else:  # pragma: no cover
        raise AssertionError(model_type)
    sw, sl = _window(c, window, sliding)
    return Transformer(
        vocab=c.size("vocab_size"), width=D, layers=L,
        attention=Attention(heads=H, kv_heads=kv, head_dim=dh, bias=bias, out_bias=out_bias, qk_norm=qk_norm),
        ffn=FFN(c.size("intermediate_size"), bias=ffn_bias, activation=_activation(c, "hidden_act", "silu")),
        tied=c.flag("tie_word_embeddings", False), sliding_window=sw, sliding_layers=sl,
        name=c.name(model_type))


def _mixtral(d: dict) -> Transformer:
    """Mixtral: every layer a MoE of ``num_local_experts`` gated experts of ``intermediate_size``;
    softmax, top-k, renormalised (= top-k then softmax)."""
    c = _Config(d, "mixtral config", {"num_local_experts": "num_experts"})
    D, H, L = c.size("hidden_size"), c.size("num_attention_heads"), c.size("num_hidden_layers")
    E = c.size("num_local_experts")
    act = _activation(c, "hidden_act", "silu")
    sw, sl = _window(c, _sliding_window_value(c, None), list(range(L)))
    return Transformer(
        vocab=c.size("vocab_size"), width=D, layers=L,
        attention=Attention(heads=H, kv_heads=_kv_heads(c, H, 8, nullable=False), head_dim=_head_dim(c, D, H, None)),
        moe=MoE(experts=E, top_k=_top_k(c, "num_experts_per_tok", E, 2, "num_local_experts"),
                expert=FFN(c.size("intermediate_size"), activation=act), router="topk_softmax"),
        moe_layers=tuple(range(L)), tied=c.flag("tie_word_embeddings", False),
        sliding_window=sw, sliding_layers=sl, name=c.name("mixtral"))


def _qwen_moe(d: dict, model_type: str) -> Transformer:
    """Qwen1.5/2-MoE and Qwen3-MoE. Layer i is MoE when ``num_experts > 0``, ``(i + 1) %
    decoder_sparse_step == 0`` and i is not in ``mlp_only_layers``; the others are dense FFNs of
    ``intermediate_size``. Qwen2-MoE adds a shared expert with a sigmoid gate and q/k/v biases;
    Qwen3-MoE has QK-norm and no shared expert."""
    qwen3 = model_type == "qwen3_moe"
    c = _Config(d, f"{model_type} config", {"num_experts": "num_local_experts"})
    D, H, L = c.size("hidden_size"), c.size("num_attention_heads"), c.size("num_hidden_layers")
    E = c.size("num_experts", zero_ok=True)
    step = c.size("decoder_sparse_step", 1)
    only = c.int_list("mlp_only_layers", None) or []
    moe_layers = tuple(i for i in range(L) if i not in only and E > 0 and (i + 1) % step == 0)
    act = _activation(c, "hidden_act", "silu")
    moe = None
    if moe_layers:
        router = "topk_softmax" if c.flag("norm_topk_prob", False) else "softmax_topk"
        k = _top_k(c, "num_experts_per_tok", E, 8 if qwen3 else 4)
        expert = FFN(c.size("moe_intermediate_size"), activation=act)
        if qwen3:
            moe = MoE(experts=E, top_k=k, expert=expert, router=router)
        else:
            moe = MoE(experts=E, top_k=k, expert=expert, router=router, shared_experts=1, shared_gate=True,
                      shared=FFN(c.size("shared_expert_intermediate_size"), activation=act))
    ffn = FFN(c.size("intermediate_size"), activation=act) if len(moe_layers) < L else None
    if qwen3:
        attn = Attention(heads=H, kv_heads=_kv_heads(c, H, 4, nullable=False),
                         head_dim=_head_dim(c, D, H, None, nullable=False),
                         bias=c.flag("attention_bias", False), out_bias=c.flag("attention_bias", False),
                         qk_norm="head")
        window = _sliding_window_value(c, 4096) if c.flag("use_sliding_window", False) else None
        sliding = list(range(L))  # the attention reads config.sliding_window on every layer
    else:
        # Qwen2MoeConfig allows null but never replaces it, and its attention then fails: an error here
        attn = Attention(heads=H, kv_heads=_kv_heads(c, H, 16, nullable=False), head_dim=_head_dim(c, D, H, None, nullable=False),
                         bias=c.flag("qkv_bias", True))
        use = c.flag("use_sliding_window", False)
        window = _sliding_window_value(c, 4096) if use else None
        max_window = c.size("max_window_layers", 28, zero_ok=True)
        types = _layer_types(c, L, ["sliding_attention" if (i + 1) % 2 and i < max_window and use
                                    else "full_attention" for i in range(L)])
        sliding = [i for i, t in enumerate(types) if t == "sliding_attention"]
    sw, sl = _window(c, window, sliding)
    return Transformer(vocab=c.size("vocab_size"), width=D, layers=L, attention=attn, ffn=ffn, moe=moe,
                       moe_layers=moe_layers, tied=c.flag("tie_word_embeddings", False),
                       sliding_window=sw, sliding_layers=sl, name=c.name(model_type))


_DSA = {  # DeepSeek Sparse Attention families: their config classes' defaults
    "deepseek_v32": dict(vocab=129280, D=7168, F=18432, Fm=2048, L=61, H=128, kv=128, E=256, q_lora=1536,
                         nope=128, v=128, index_heads=64),
    "glm_moe_dsa": dict(vocab=154880, D=6144, F=12288, Fm=2048, L=78, H=64, kv=64, E=256, q_lora=2048,
                        nope=192, v=256, index_heads=32),
}


def _deepseek(d: dict, model_type: str) -> Transformer:
    """DeepSeek-V2 / V3 / V3.2, GLM-5 (``glm_moe_dsa``) and Kimi K2: multi-head latent attention, dense FFNs
    on the first layers, the rest MoE with ``n_shared_experts`` shared experts fused into one FFN.

    V2 routes by softmax then top-k (``norm_topk_prob`` is not read by its modeling code); the others by
    sigmoid scores plus a per-expert correction bias (``e_score_correction_bias``, a buffer in ``transformers``,
    so no parameter), top-k, renormalised. V2's ``attention_bias`` and ``mlp_bias`` put biases on the q/kv
    down-projections and the output projection, and on the dense and shared FFNs; the others read only
    ``attention_bias``. V2/V3: ``q_lora_rank: null`` means no query compression; V3.2 and GLM-5 always
    compress (null is refused). Dense layers: V2/V3 the first ``first_k_dense_replace``; V3.2 and GLM-5 the
    ``"dense"`` entries of ``mlp_layer_types`` when given. Multi-token-prediction layers are not instantiated.

    V3.2 and GLM-5 add DeepSeek Sparse Attention to every layer: a lightning indexer of ``index_n_heads``
    heads of ``index_head_dim`` picks ``index_topk`` keys per query. GLM-5.2's ``"shared"`` layers
    (``indexer_types``, or derived from ``index_topk_pattern`` / ``index_topk_freq`` and
    ``index_skip_topk_offset``) have no indexer and reuse the previous one's keys.

    Kimi K2 publishes ``model_type: "kimi_k2"`` with an ``auto_map`` to its own copy of the DeepSeek-V3
    code: it is read as ``deepseek_v3`` (as transformers itself does inside Kimi K2.5); nothing is imported.
    """
    v2 = model_type == "deepseek_v2"
    dsa = _DSA.get(model_type)
    label = model_type
    if model_type == "kimi_k2":
        model_type = "deepseek_v3"
    aliases = {"n_routed_experts": "num_experts" if v2 else "num_local_experts"}
    c = _Config(d, f"{label} config", aliases)
    D, H, L = c.size("hidden_size"), c.size("num_attention_heads"), c.size("num_hidden_layers")
    if v2:
        _derived_head_dim(c, D, H)  # DeepseekV2Config.validate_architecture
    kv = c.raw("num_key_value_heads", None if v2 else (dsa or {}).get("kv", 128))
    if kv is not None and c.size("num_key_value_heads", kv) != H:
        raise c.error(f"num_key_value_heads ({kv}) must equal num_attention_heads ({H}): "
                      "MLA has one key/value head per query head")
    if dsa:
        q_lora = c.size("q_lora_rank", dsa["q_lora"])
    else:
        q_lora = c.size("q_lora_rank", 1536, none=True)
    rope, nope = c.size("qk_rope_head_dim", 64), c.size("qk_nope_head_dim", dsa["nope"] if dsa else 128)
    attn_bias = c.flag("attention_bias", False)
    mlp_bias = c.flag("mlp_bias", False) if v2 else False
    indexer = None
    if dsa:
        indexer = Indexer(c.size("index_n_heads", dsa["index_heads"]), c.size("index_head_dim", 128),
                          c.size("index_topk", 2048), interleaved=model_type == "glm_moe_dsa")  # GLM-5: pairs
    attn = Attention(heads=H, kv_heads=H, head_dim=nope + rope, v_head_dim=c.size("v_head_dim", dsa["v"] if dsa else 128),
                     bias=attn_bias, out_bias=attn_bias, q_lora_rank=q_lora or 0,
                     kv_lora_rank=c.size("kv_lora_rank", 512), rope_head_dim=rope, indexer=indexer)
    first_dense = c.size("first_k_dense_replace", 0 if v2 else 3, zero_ok=True)
    dense = [i < first_dense for i in range(L)]
    if dsa:
        dense = [not s for s in _mlp_layer_types(c, L, [not x for x in dense])]
    act = _activation(c, "hidden_act", "silu")
    moe = None
    if not all(dense):
        num_experts = c.raw("num_experts", None) if not v2 else None
        E = c.size("num_experts") if num_experts is not None else c.size("n_routed_experts")
        k = _top_k(c, "num_experts_per_tok", E, _REQUIRED if v2 else 8, "n_routed_experts")
        F = c.size("moe_intermediate_size")
        S = c.size("n_shared_experts", 2 if v2 else 1, zero_ok=True)
        if S == 0 and mlp_bias:
            raise c.error("n_shared_experts 0 with mlp_bias builds a shared FFN of width 0 that still has "
                          "an output bias; whatruns does not model that")
        shared = FFN(F * S, bias=mlp_bias, activation=act) if S else None
        moe = MoE(experts=E, top_k=k, expert=FFN(F, activation=act), shared=shared, shared_experts=S,
                  router="softmax_topk" if v2 else "sigmoid_topk", score_bias=not v2, score_bias_buffer=not v2)
    ffn = FFN(c.size("intermediate_size"), bias=mlp_bias, activation=act) if any(dense) else None
    shared_idx = _shared_indexers(c, L) if model_type == "glm_moe_dsa" else [False] * L
    blocks = [Block(attn.with_(indexer=indexer.with_(shared=True)) if shared_idx[i] else attn,
                    ffn if dense[i] else moe) for i in range(L)]
    return Transformer(vocab=c.size("vocab_size"), width=D, blocks=blocks, tied=c.flag("tie_word_embeddings", False),
                       name=c.name(label))


def _shared_indexers(c: _Config, L: int) -> List[bool]:
    """GLM-5: which layers reuse the previous layer's indexer (``"shared"``), as GlmMoeDsaConfig derives it:
    ``indexer_types``; else ``index_topk_pattern`` (a string of F/S, or a list); else layer i runs its own
    indexer when max(i - offset + 1, 0) is a multiple of ``index_topk_freq``."""
    types = c.raw("indexer_types", None)
    if types is None:
        pattern = c.raw("index_topk_pattern", None)
        if isinstance(pattern, str):
            if any(ch not in "FS" for ch in pattern):
                raise c.error(f"index_topk_pattern must be letters F and S, got {_short_repr(pattern)}")
            types = ["full" if ch == "F" else "shared" for ch in pattern]
        elif pattern is not None:
            types = pattern
        else:
            raw_freq = c.raw("index_topk_freq", 1)
            freq = max(raw_freq, 1) if isinstance(raw_freq, int) and not isinstance(raw_freq, bool) else None
            offset = c.raw("index_skip_topk_offset", 2)
            if freq is None or isinstance(offset, bool) or not isinstance(offset, int):
                raise c.error("index_topk_freq and index_skip_topk_offset must be integers")
            types = ["full" if max(i - offset + 1, 0) % freq == 0 else "shared" for i in range(L)]
    if not isinstance(types, list) or len(types) != L or not all(isinstance(t, str) for t in types):
        raise c.error(f"indexer_types must be a list of {L} strings, got {_short_repr(types)}")
    if types and types[0] == "shared":
        raise c.error("indexer_types: the first layer cannot be 'shared' (there is no indexer before it)")
    return [t == "shared" for t in types]


def _qwen3_next(d: dict, model_type: str = "qwen3_next") -> Transformer:
    """Qwen3-Next and the text models of Qwen3.5 (``qwen3_5_text``, dense; ``qwen3_5_moe_text``): hybrids of
    gated DeltaNet layers (``linear_attention``) and gated full attention (``full_attention``: the query
    projection twice as wide, its second half a sigmoid gate on the output; QK-norm per head; head_dim default
    256), by ``layer_types`` or, absent, every ``full_attention_interval``-th layer (default 4) full.

    Another attention type in ``layer_types`` builds no mixer at all in Qwen3-Next and Qwen3.5-MoE, and full
    attention in dense Qwen3.5 (as transformers does). FFNs: Qwen3-Next as Qwen2-MoE (layer i is MoE when
    ``num_experts > 0``, (i + 1) is a multiple of ``decoder_sparse_step`` and i is not in ``mlp_only_layers``;
    softmax router, renormalised if ``norm_topk_prob``, default true); Qwen3.5-MoE every layer MoE, always
    renormalised; dense Qwen3.5 a gated FFN of ``intermediate_size`` everywhere. The MoEs have a shared
    expert with a sigmoid gate."""
    c = _Config(d, f"{model_type} config")
    D, H, L = c.size("hidden_size"), c.size("num_attention_heads"), c.size("num_hidden_layers")
    bias = c.flag("attention_bias", False)
    kv = c.size("num_key_value_heads", 4 if model_type == "qwen3_5_text" else 2)
    if H % kv:
        raise c.error(f"num_attention_heads ({H}) must be a multiple of num_key_value_heads ({kv})")
    attn = Attention(heads=H, kv_heads=kv, head_dim=c.size("head_dim", 256), bias=bias, out_bias=bias,
                     qk_norm="head", gate="channel")
    Hk, Hv = c.size("linear_num_key_heads", 16), c.size("linear_num_value_heads", 32)
    if Hv % Hk:
        raise c.error(f"linear_num_value_heads ({Hv}) must be a multiple of linear_num_key_heads ({Hk})")
    linear = LinearAttention(heads=Hv, key_heads=Hk, key_dim=c.size("linear_key_head_dim", 128),
                             value_dim=c.size("linear_value_head_dim", 128), conv=c.size("linear_conv_kernel_dim", 4),
                             activation=_activation(c, "hidden_act", "silu"))
    interval = c.size("full_attention_interval", 4)
    types = _layer_types(c, L, ["linear_attention" if (i + 1) % interval else "full_attention" for i in range(L)])
    other = attn if model_type == "qwen3_5_text" else None
    mixers = [linear if t == "linear_attention" else attn if t == "full_attention" else other for t in types]
    # a layer whose type builds no mixer still holds the norm before it
    extra = [int(m is None) for m in mixers]
    act = _activation(c, "hidden_act", "silu")
    if model_type == "qwen3_5_text":
        is_moe, E = [False] * L, 0
    elif model_type == "qwen3_5_moe_text":
        E = c.size("num_experts")
        is_moe = [True] * L
    else:
        E = c.size("num_experts", zero_ok=True)
        step = c.size("decoder_sparse_step", 1)
        only = set(c.int_list("mlp_only_layers", None) or [])
        is_moe = [E > 0 and i not in only and (i + 1) % step == 0 for i in range(L)]
    moe = None
    if any(is_moe):
        renorm = c.flag("norm_topk_prob", True) if model_type == "qwen3_next" else True
        moe = MoE(experts=E, top_k=_top_k(c, "num_experts_per_tok", E, 10 if model_type == "qwen3_next" else 8),
                  router="topk_softmax" if renorm else "softmax_topk",
                  expert=FFN(c.size("moe_intermediate_size"), activation=act),
                  shared=FFN(c.size("shared_expert_intermediate_size"), activation=act), shared_experts=1,
                  shared_gate=True)
    ffn = FFN(c.size("intermediate_size"), activation=act) if not all(is_moe) else None
    blocks = [Block(mixers[i], moe if is_moe[i] else ffn, extra_norms=extra[i]) for i in range(L)]
    return Transformer(vocab=c.size("vocab_size"), width=D, blocks=blocks, tied=c.flag("tie_word_embeddings", False),
                       name=c.name(model_type))


def _qwen3_vl_moe_text(d: dict) -> Transformer:
    """Qwen3-VL-MoE's text model: Qwen3-MoE's layout (QK-norm per head, biases on q, k, v and o with
    ``attention_bias``; layer i is MoE when i is not in ``mlp_only_layers``, ``num_experts > 0`` and (i + 1)
    is a multiple of ``decoder_sparse_step``), always renormalised, no shared expert; ``head_dim`` absent
    or null is ``hidden_size // num_attention_heads``, rounded down."""
    c = _Config(d, "qwen3_vl_moe_text config", {"num_experts": "num_local_experts"})
    D, H, L = c.size("hidden_size"), c.size("num_attention_heads"), c.size("num_hidden_layers")
    kv = c.size("num_key_value_heads", 16)
    if H % kv:
        raise c.error(f"num_attention_heads ({H}) must be a multiple of num_key_value_heads ({kv})")
    dh = _floor_head_dim(c, D, H, derive_if_falsy=True)
    bias = c.flag("attention_bias", False)
    E = c.size("num_experts", zero_ok=True)
    step = c.size("decoder_sparse_step", 1)
    only = set(c.int_list("mlp_only_layers", None) or [])
    moe_layers = tuple(i for i in range(L) if i not in only and E > 0 and (i + 1) % step == 0)
    act = _activation(c, "hidden_act", "silu")
    moe = MoE(experts=E, top_k=_top_k(c, "num_experts_per_tok", E, 4), router="topk_softmax",
              expert=FFN(c.size("moe_intermediate_size"), activation=act)) if moe_layers else None
    ffn = FFN(c.size("intermediate_size"), activation=act) if len(moe_layers) < L else None
    return Transformer(vocab=c.size("vocab_size"), width=D, layers=L,
                       attention=Attention(heads=H, kv_heads=kv, head_dim=dh, bias=bias, out_bias=bias, qk_norm="head"),
                       ffn=ffn, moe=moe, moe_layers=moe_layers, tied=c.flag("tie_word_embeddings", True),
                       name=c.name("qwen3_vl_moe_text"))


def _mlp_layer_types(c: _Config, L: int, default: List[bool]) -> List[bool]:
    """Which layers are MoE, from ``mlp_layer_types`` ("dense" / "sparse") when given, else ``default``."""
    kinds = c.raw("mlp_layer_types", None)
    if kinds is None:
        return default
    if not isinstance(kinds, list) or len(kinds) != L or any(k not in ("dense", "sparse") for k in kinds):
        raise c.error(f"mlp_layer_types must be a list of {L} entries 'dense' or 'sparse', got {_short_repr(kinds)}")
    return [k == "sparse" for k in kinds]


def _mimo_v2_flash(d: dict) -> Transformer:
    """MiMo-V2-Flash: full attention on layer 0 and every sixth layer, sliding windows elsewhere (by
    ``layer_types``); sliding layers have twice the key/value heads and attention sinks (hard-coded, as in
    transformers, whatever ``swa_*`` keys the file holds); values of ``v_head_dim``; biases on q, k, v (never
    on the output); the window is ``sliding_window_size + 1`` when given (the query itself counts), else
    ``sliding_window``. FFNs by ``mlp_layer_types`` (default: layer 0 dense, the rest MoE): sigmoid routing
    with a correction bias (a buffer), no shared expert."""
    c = _Config(d, "mimo_v2_flash config", {"n_routed_experts": "num_local_experts"})
    D, H, L = c.size("hidden_size"), c.size("num_attention_heads"), c.size("num_hidden_layers")
    K = c.size("num_key_value_heads", 4)
    for heads in (K, 2 * K):
        if H % heads:
            raise c.error(f"num_attention_heads ({H}) must be a multiple of {heads} key/value heads")
    bias = c.flag("attention_bias", False)
    window = c.raw("sliding_window_size", None)
    window = c.size("sliding_window_size") + 1 if window is not None else c.size("sliding_window", 129)
    full = Attention(heads=H, kv_heads=K, head_dim=c.size("head_dim", 192), v_head_dim=c.size("v_head_dim", 128),
                     bias=bias)
    sliding = full.with_(kv_heads=2 * K, sinks=True, window=window)
    types = _layer_types(c, L, ["full_attention" if i == 0 or (i + 1) % 6 == 0 else "sliding_attention"
                                for i in range(L)])
    sparse = _mlp_layer_types(c, L, [i > 0 for i in range(L)])
    act = _activation(c, "hidden_act", "silu")
    moe = None
    if any(sparse):
        E = c.size("n_routed_experts")
        moe = MoE(experts=E, top_k=_top_k(c, "num_experts_per_tok", E, 8, "n_routed_experts"),
                  expert=FFN(c.size("moe_intermediate_size"), activation=act), router="sigmoid_topk",
                  score_bias=True, score_bias_buffer=True)
    ffn = FFN(c.size("intermediate_size"), activation=act) if not all(sparse) else None
    blocks = [Block(sliding if t == "sliding_attention" else full, moe if s else ffn) for t, s in zip(types, sparse)]
    return Transformer(vocab=c.size("vocab_size"), width=D, blocks=blocks, tied=c.flag("tie_word_embeddings", False),
                       name=c.name("mimo_v2_flash"))


_NEMOTRON_BLOCKS = {"M": "linear_attention", "*": "full_attention", "-": "mlp", "E": "moe",
                    "mamba": "linear_attention", "attention": "full_attention"}


def _nemotron_h(d: dict) -> Transformer:
    """Nemotron-H and Nemotron 3: a list of single-sublayer blocks -- Mamba-2, attention (GQA, no biases, no
    positional encoding), an ungated MLP (ReLU², ``mlp_hidden_act``), or a MoE -- each with one norm before it.
    The list is ``layers_block_type`` (alias ``layer_types``; legacy "mamba" and "attention" accepted), else
    ``hybrid_override_pattern`` (M, *, -, E), else transformers' default of four blocks; ``num_hidden_layers``
    is not read (it is the list's length). The MoE: ungated experts without biases, in a latent space of
    ``moe_latent_size`` when given; one shared MLP of ``moe_shared_expert_intermediate_size`` (0:
    ``intermediate_size``); sigmoid router with a correction bias (a buffer). The LM head is never tied."""
    c = _Config(d, "nemotron_h config", {"layers_block_type": "layer_types", "n_routed_experts": "num_local_experts",
                                         "n_groups": "mamba_n_groups", "conv_kernel": "mamba_d_conv",
                                         "use_conv_bias": "mamba_conv_bias"})
    types = c.raw("layers_block_type", None)
    if types is None:
        pattern = c.raw("hybrid_override_pattern", None)
        if pattern is not None:
            if not isinstance(pattern, str) or any(ch not in "M*-E" for ch in pattern):
                raise c.error(f"hybrid_override_pattern must be a string of M, *, - and E, got {_short_repr(pattern)}")
            types = [_NEMOTRON_BLOCKS[ch] for ch in pattern]
        else:
            types = ["linear_attention", "moe", "full_attention", "mlp"]
    if not isinstance(types, list) or not types:
        raise c.error(f"layers_block_type must be a non-empty list, got {_short_repr(types)}")
    types = [_NEMOTRON_BLOCKS.get(t, t) if isinstance(t, str) else t for t in types]
    bad = [t for t in types if t not in ("linear_attention", "full_attention", "mlp", "moe")]
    if bad:
        raise c.error(f"layers_block_type has {_short_repr(bad[0])}: blocks are linear_attention, full_attention, "
                      "mlp or moe")
    if len(types) > BOUNDS["layers"]:
        raise c.error(f"{len(types):,} blocks, beyond the bound {BOUNDS['layers']:,}")
    D = c.size("hidden_size")
    mlp_bias = c.flag("mlp_bias", False)
    act = _activation(c, "mlp_hidden_act", "relu2")
    blocks = {}
    if "linear_attention" in types:
        heads = c.size("mamba_num_heads", 128)
        G = c.size("n_groups", 8)
        if heads % G:
            raise c.error(f"mamba_num_heads ({heads}) must be a multiple of n_groups ({G})")
        blocks["linear_attention"] = Block(Mamba2(heads=heads, head_dim=c.size("mamba_head_dim", 64),
                                                  state=c.size("ssm_state_size", 128), groups=G,
                                                  conv=c.size("conv_kernel", 4), conv_bias=c.flag("use_conv_bias", True),
                                                  bias=c.flag("use_bias", False),
                                                  dt_min=_float(c, "time_step_min", 0.001),
                                                  activation=_activation(c, "mamba_hidden_act", "silu")))
    if "full_attention" in types:
        H = c.size("num_attention_heads")
        K = c.size("num_key_value_heads", 8)
        if H % K:
            raise c.error(f"num_attention_heads ({H}) must be a multiple of num_key_value_heads ({K})")
        blocks["full_attention"] = Block(Attention(heads=H, kv_heads=K, head_dim=c.size("head_dim", 128)))
    if "mlp" in types:
        blocks["mlp"] = Block(ffn=FFN(c.size("intermediate_size"), gated=False, bias=mlp_bias, activation=act))
    if "moe" in types:
        E = c.size("n_routed_experts")
        shared = c.size("moe_shared_expert_intermediate_size", zero_ok=True) or c.size("intermediate_size")
        latent = c.size("moe_latent_size", None, none=True) or 0
        blocks["moe"] = Block(ffn=MoE(experts=E, top_k=_top_k(c, "num_experts_per_tok", E, 2, "n_routed_experts"),
                                      expert=FFN(c.size("moe_intermediate_size"), gated=False, activation=act),
                                      shared=FFN(shared, gated=False, bias=mlp_bias, activation=act), shared_experts=1,
                                      router="sigmoid_topk", score_bias=True, score_bias_buffer=True,
                                      latent=latent, latent_bias=mlp_bias and latent > 0))
    return Transformer(vocab=c.size("vocab_size"), width=D, blocks=[blocks[t] for t in types], tied=False,
                       name=c.name("nemotron_h"))


def _glm4_moe(d: dict) -> Transformer:
    """GLM-4.5 / 4.6 / 4.7 (``glm4_moe``): dense FFNs on the first ``first_k_dense_replace`` layers (default 1),
    then MoE with ``n_shared_experts`` shared experts of ``moe_intermediate_size`` each (fused into one FFN, no
    gate) and a sigmoid router with a correction bias (a buffer); biases on q, k, v (``attention_bias``) but
    never on the output; QK-norm per head with ``use_qk_norm``; ``head_dim`` absent is
    ``hidden_size // num_attention_heads`` (rounded down)."""
    c = _Config(d, "glm4_moe config", {"n_routed_experts": "num_local_experts"})
    D, H, L = c.size("hidden_size"), c.size("num_attention_heads"), c.size("num_hidden_layers")
    kv = c.size("num_key_value_heads", 8)
    if H % kv:
        raise c.error(f"num_attention_heads ({H}) must be a multiple of num_key_value_heads ({kv})")
    attn = Attention(heads=H, kv_heads=kv, head_dim=_floor_head_dim(c, D, H), bias=c.flag("attention_bias", False),
                     qk_norm="head" if c.flag("use_qk_norm", False) else None)
    first_dense = c.size("first_k_dense_replace", 1, zero_ok=True)
    moe_layers = tuple(range(min(first_dense, L), L))
    act = _activation(c, "hidden_act", "silu")
    moe = None
    if moe_layers:
        E = c.size("n_routed_experts")
        F = c.size("moe_intermediate_size")
        S = c.size("n_shared_experts", 1, zero_ok=True)
        moe = MoE(experts=E, top_k=_top_k(c, "num_experts_per_tok", E, 8, "n_routed_experts"),
                  expert=FFN(F, activation=act), shared=FFN(F * S, activation=act) if S else None, shared_experts=S,
                  router="sigmoid_topk", score_bias=True, score_bias_buffer=True)
    ffn = FFN(c.size("intermediate_size"), activation=act) if len(moe_layers) < L else None
    return Transformer(vocab=c.size("vocab_size"), width=D, layers=L, attention=attn, ffn=ffn, moe=moe,
                       moe_layers=moe_layers, tied=c.flag("tie_word_embeddings", False), name=c.name("glm4_moe"))


def _minimax_m2(d: dict) -> Transformer:
    """MiniMax-M2: every layer full attention (no biases; QK-norm over all heads at once, H·head_dim on q and
    K·head_dim on k, always built whatever ``use_qk_norm`` says) and a MoE of ``num_local_experts`` experts of
    ``intermediate_size``, sigmoid router with a correction bias (a buffer), always renormalised, no shared
    expert. The ``use_qk_norm``, ``qk_norm_type``, ``shared_intermediate_size`` and ``attn_type_list`` keys of
    the published files are not read (transformers reads none of them)."""
    c = _Config(d, "minimax_m2 config", {"num_local_experts": "num_experts"})
    D, H, L = c.size("hidden_size"), c.size("num_attention_heads"), c.size("num_hidden_layers")
    kv = c.size("num_key_value_heads", 8)
    if H % kv:
        raise c.error(f"num_attention_heads ({H}) must be a multiple of num_key_value_heads ({kv})")
    E = c.size("num_local_experts")
    return Transformer(
        vocab=c.size("vocab_size"), width=D, layers=L,
        attention=Attention(heads=H, kv_heads=kv, head_dim=c.size("head_dim", 128), qk_norm="full"),
        moe=MoE(experts=E, top_k=_top_k(c, "num_experts_per_tok", E, 8, "num_local_experts"),
                expert=FFN(c.size("intermediate_size"), activation=_activation(c, "hidden_act", "silu")),
                router="sigmoid_topk", score_bias=True, score_bias_buffer=True),
        moe_layers=tuple(range(L)), tied=c.flag("tie_word_embeddings", False), name=c.name("minimax_m2"))


def _sliding_all(c: _Config, L: int, window):
    """A sliding window on every layer when the config gives one (Phi-3, PhiMoE, Mixtral)."""
    return _window(c, window, list(range(L)))


def _phi3(d: dict) -> Transformer:
    """Phi-3 / Phi-3.5-mini / Phi-4(-mini) (``phi3``): Llama's layout with fused q/k/v and gate/up projections
    (the same parameters), never a bias (``attention_bias``, ``mlp_bias`` in the file are not read);
    ``num_key_value_heads`` absent or null is the number of heads; ``head_dim`` absent is
    ``hidden_size // num_attention_heads`` rounded down; ``sliding_window``, when set, on every layer."""
    c = _Config(d, "phi3 config")
    D, H, L = c.size("hidden_size"), c.size("num_attention_heads"), c.size("num_hidden_layers")
    sw, sl = _sliding_all(c, L, _sliding_window_value(c, None))
    return Transformer(
        vocab=c.size("vocab_size"), width=D, layers=L,
        attention=Attention(heads=H, kv_heads=_kv_heads(c, H, None), head_dim=_floor_head_dim(c, D, H)),
        ffn=FFN(c.size("intermediate_size"), activation=_activation(c, "hidden_act", "silu")),
        tied=c.flag("tie_word_embeddings", False), sliding_window=sw, sliding_layers=sl, name=c.name("phi3"))


def _phimoe(d: dict) -> Transformer:
    """Phi-3.5-MoE (``phimoe``): LayerNorms with biases, biases on q, k, v and o with ``attention_bias``, an
    LM-head bias with ``lm_head_bias`` (kept when the weight is tied), every layer a MoE of
    ``num_local_experts`` experts of ``intermediate_size`` routed by sparsemixer -- always two experts per
    token, whatever ``num_experts_per_tok`` says (its inference path: the best expert, then the best of the
    rest, each weighted by a softmax over the logits near it)."""
    c = _Config(d, "phimoe config")
    D, H, L = c.size("hidden_size"), c.size("num_attention_heads"), c.size("num_hidden_layers")
    kv = c.size("num_key_value_heads", 8)
    if H % kv:
        raise c.error(f"num_attention_heads ({H}) must be a multiple of num_key_value_heads ({kv})")
    E = c.size("num_local_experts")
    if E < 2:
        raise c.error(f"num_local_experts ({E}): sparsemixer routes every token to two experts")
    bias = c.flag("attention_bias", False)
    sw, sl = _sliding_all(c, L, _sliding_window_value(c, None))
    return Transformer(
        vocab=c.size("vocab_size"), width=D, layers=L,
        attention=Attention(heads=H, kv_heads=kv, head_dim=_floor_head_dim(c, D, H), bias=bias, out_bias=bias),
        moe=MoE(experts=E, top_k=2, expert=FFN(c.size("intermediate_size"), activation=_activation(c, "hidden_act", "silu")),
                router="sparsemixer"),
        moe_layers=tuple(range(L)), norm=Norm("layernorm", bias=True), tied=c.flag("tie_word_embeddings", False),
        head_bias=c.flag("lm_head_bias", False), sliding_window=sw, sliding_layers=sl, name=c.name("phimoe"))


def _gemma(d: dict, model_type: str) -> Transformer:
    """Gemma 2 and Gemma 3's text model (``gemma3_text``): four norms per layer (before and after attention and
    FFN), biases on q, k, v and o with ``attention_bias``, a GeGLU FFN (``hidden_activation``; ``hidden_act`` is
    not read), tied embeddings by default; sliding-window layers by ``layer_types``, else every other layer
    (Gemma 2: layer 0 sliding) or five of every ``sliding_window_pattern`` (Gemma 3, default 6); Gemma 3 adds
    QK-norm per head. ``hidden_size`` must be a multiple of ``num_attention_heads`` (transformers checks it)
    though ``head_dim`` (default 256) is its own."""
    c = _Config(d, f"{model_type} config")
    D, H, L = c.size("hidden_size"), c.size("num_attention_heads"), c.size("num_hidden_layers")
    _derived_head_dim(c, D, H)  # validate_architecture
    kv = c.size("num_key_value_heads", 4)
    if H % kv:
        raise c.error(f"num_attention_heads ({H}) must be a multiple of num_key_value_heads ({kv})")
    bias = c.flag("attention_bias", False)
    attn = Attention(heads=H, kv_heads=kv, head_dim=c.size("head_dim", 256), bias=bias, out_bias=bias,
                     qk_norm="head" if model_type == "gemma3_text" else None)
    if model_type == "gemma2":
        default = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(L)]
    else:
        period = c.size("sliding_window_pattern", 6)
        default = ["sliding_attention" if (i + 1) % period else "full_attention" for i in range(L)]
    types = _layer_types(c, L, default)
    window = _sliding_window_value(c, 4096)
    sliding = [i for i, t in enumerate(types) if t == "sliding_attention"]
    if sliding and window is None:
        raise c.error("sliding_window is null but layers are sliding_attention (transformers fails at the forward)")
    ffn = FFN(c.size("intermediate_size"), activation=_activation(c, "hidden_activation", "gelu_pytorch_tanh"))
    blocks = [Block(attn.with_(window=window) if i in sliding and window else attn, ffn, post_norms=True)
              for i in range(L)]
    return Transformer(vocab=c.size("vocab_size"), width=D, blocks=blocks, tied=c.flag("tie_word_embeddings", True),
                       name=c.name(model_type))


def _routed_only(d: dict, model_type: str) -> Transformer:
    """OLMoE and GraniteMoE: every layer full attention and a MoE whose experts have ``intermediate_size``
    (no dense FFN, no shared expert); ``num_key_value_heads`` absent or null is the number of heads; biases on
    q, k, v and o with ``attention_bias``. OLMoE: QK-norm over whole vectors (q of D, k of K·D/H; so
    ``head_dim`` must be D/H), softmax router renormalised only with ``norm_topk_prob``. GraniteMoE: top-k of
    the logits then softmax; its embedding, attention, residual and logit multipliers change no count."""
    olmoe = model_type == "olmoe"
    c = _Config(d, f"{model_type} config", {"num_experts": "num_local_experts"} if olmoe else None)
    D, H, L = c.size("hidden_size"), c.size("num_attention_heads"), c.size("num_hidden_layers")
    kv = _kv_heads(c, H, None)
    if olmoe:
        dh = _derived_head_dim(c, D, H)  # q_norm has D weights: H heads of D/H
        if c.has("head_dim") and c.raw("head_dim") != dh:
            raise c.error(f"head_dim {c.raw('head_dim')!r} is not hidden_size / num_attention_heads ({dh}): OLMoE's "
                          "QK-norm is over hidden_size")
        E = c.size("num_experts")
        router = "topk_softmax" if c.flag("norm_topk_prob", False) else "softmax_topk"
    else:
        dh = _floor_head_dim(c, D, H)
        E = c.size("num_local_experts")
        router = "topk_softmax"
    bias = c.flag("attention_bias", False)
    return Transformer(
        vocab=c.size("vocab_size"), width=D, layers=L,
        attention=Attention(heads=H, kv_heads=kv, head_dim=dh, bias=bias, out_bias=bias,
                            qk_norm="full" if olmoe else None),
        moe=MoE(experts=E, top_k=_top_k(c, "num_experts_per_tok", E, 8 if olmoe else 2, "num_experts" if olmoe
                                        else "num_local_experts"),
                expert=FFN(c.size("intermediate_size"), activation=_activation(c, "hidden_act", "silu")), router=router),
        moe_layers=tuple(range(L)), tied=c.flag("tie_word_embeddings", False), name=c.name(model_type))


def _pre_alias(c: _Config, key: str, default: int) -> int:
    """``key`` as a config class's ``__post_init__`` sees it: under that name, else the class default --
    T5 and Switch derive the decoder's layers (and Switch its sparse steps) from ``num_layers`` before the
    ``num_hidden_layers`` alias is applied, so a file that says only ``num_hidden_layers`` gets a decoder
    of the default depth."""
    return c.size(key, default) if key in c.d else default


def _t5(d: dict) -> Transformer:
    """T5 (v1.0, v1.1, Flan-T5): an encoder of ``num_layers`` and a decoder of ``num_decoder_layers`` (absent or
    null: as many), no biases, T5's weight-only RMSNorm, a relative-position bias of
    ``relative_attention_num_buckets`` x heads in each stack's first layer, an FFN of ``d_ff`` plain or gated
    by ``feed_forward_proj`` ("relu", "gated-gelu", ...). The LM head is the shared embedding: transformers
    5.24's T5Config forces ``tie_word_embeddings`` true (a v1.1 / Flan file's false only switches off the
    output scaling), so a model built from the config holds V·D once (a Flan checkpoint loaded with
    ``from_pretrained`` keeps its separate head: V·D more)."""
    c = _Config(d, "t5 config", {"d_model": "hidden_size", "num_heads": "num_attention_heads",
                                 "num_layers": "num_hidden_layers", "d_kv": "head_dim"})
    D, H = c.size("d_model"), c.size("num_heads")
    enc = c.size("num_layers")
    dec = c.size("num_decoder_layers", None, none=True)
    dec = _pre_alias(c, "num_layers", 6) if dec is None else dec
    proj = c.raw("feed_forward_proj", "relu")
    if not isinstance(proj, str):
        raise c.error(f"feed_forward_proj must be a string like 'relu' or 'gated-gelu', got {_short_repr(proj)}")
    gated = proj.startswith("gated-")
    act = proj[len("gated-"):] if gated else proj
    if gated and act == "gelu":
        act = "gelu_new"  # T5Config: "gated-gelu" means the tanh approximation
    if "-" in act or act not in _ACTIVATIONS:
        raise c.error(f"feed_forward_proj {proj!r} is not '{{act}}' or 'gated-{{act}}' with an activation whatruns "
                      f"models ({', '.join(_ACTIVATIONS)})")
    ffn = FFN(c.size("d_ff"), gated=gated, activation=_ACTIVATIONS[act])
    return Transformer(
        vocab=c.size("vocab_size"), width=D, layers=dec, encoder_layers=enc,
        attention=Attention(heads=H, kv_heads=H, head_dim=c.size("d_kv", 64)), ffn=ffn, tied=True,
        relative_buckets=c.size("relative_attention_num_buckets", 32, zero_ok=True), name=c.name("t5"))


def _bert(d: dict) -> Transformer:
    """BERT, as the masked language model its checkpoints are (``BertForMaskedLM``): an encoder alone
    (attention over every position) of post-norm layers with biases everywhere and LayerNorms with biases;
    learned positions (``max_position_embeddings``) and token types (``type_vocab_size``), a LayerNorm after
    the embeddings and none after the last layer; the MLM head -- a D x D dense layer, activation and
    LayerNorm, then the vocabulary, tied to the embedding, with a bias of V. Not counted: the pooler that
    ``BertModel`` adds (D² + D), the next-sentence head of pre-training. An untied head and a BERT used as a
    decoder (``is_decoder``, ``add_cross_attention``) are refused."""
    c = _Config(d, "bert config")
    D, H, L = c.size("hidden_size"), c.size("num_attention_heads"), c.size("num_hidden_layers")
    if c.flag("is_decoder", False) or c.flag("add_cross_attention", False):
        raise c.error("is_decoder / add_cross_attention (BERT as a decoder) is not modelled")
    if not c.flag("tie_word_embeddings", True):
        raise c.error("tie_word_embeddings false (an untied MLM head, with a second bias) is not modelled")
    a = Attention(heads=H, kv_heads=H, head_dim=_derived_head_dim(c, D, H), bias=True, out_bias=True)
    layer = Block(a, FFN(c.size("intermediate_size"), gated=False, bias=True, activation=_activation(c, "hidden_act", "gelu")))
    return Transformer(vocab=c.size("vocab_size"), width=D, blocks=(), encoder=[Run(layer, L)],
                       norm=Norm("layernorm", bias=True), tied=True, positions=c.size("max_position_embeddings", 512),
                       token_types=c.size("type_vocab_size", 2, zero_ok=True), embedding_norm=True, final_norm=False,
                       head_transform=True, head_bias=True, name=c.name("bert"))


def _gemma4_text(d: dict) -> Transformer:
    """Gemma 4's text model (``gemma4_text``; the ``gemma4`` composite is read as its ``text_config``).

    Sliding-window layers (``head_dim``, ``num_key_value_heads``) and full layers (``global_head_dim``,
    default 512, and with ``attention_k_eq_v`` the values taken from the key projection and
    ``num_global_key_value_heads`` key/value heads), by ``layer_types`` (default five sliding of every six;
    the last layer is always full, as transformers forces it); a file's ``per_layer_config`` (what
    transformers 5 writes) gives each layer's head_dim and key/value heads instead. The last
    ``num_kv_shared_layers`` layers make no keys or values of their own (they read the last earlier layer of
    their kind), with an FFN twice as wide if ``use_double_wide_mlp``. QK-norm per head, four norms per layer,
    biases on q, k, v, o with ``attention_bias``. Per-layer embeddings of ``hidden_size_per_layer_input``
    (default 256; 0: none) from a table of ``vocab_size_per_layer_input`` rows. With ``enable_moe_block`` every
    layer runs a MoE of ``num_experts`` (``top_k_experts``, ``moe_intermediate_size``) beside its dense FFN,
    with a router scale (D + E parameters) and three more norms."""
    c = _Config(d, "gemma4_text config")
    D, H, L = c.size("hidden_size"), c.size("num_attention_heads"), c.size("num_hidden_layers")
    types = _layer_types(c, L, ["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(L)])
    types = [*types[:-1], "full_attention"]  # transformers forces the last layer to full attention
    k_eq_v = c.flag("attention_k_eq_v", False)
    dh, kv = c.size("head_dim", 256), c.size("num_key_value_heads", 4)
    full_dh = c.size("global_head_dim", 512)
    full_kv = c.size("num_global_key_value_heads", kv) if k_eq_v and c.raw("num_global_key_value_heads", None) is not None \
        else kv
    shapes = [(full_dh, full_kv) if t == "full_attention" else (dh, kv) for t in types]
    per_layer = c.raw("per_layer_config", None)
    if per_layer is not None:  # a config transformers 5 saved: each layer's shape written out
        if not isinstance(per_layer, dict):
            raise c.error(f"per_layer_config must be an object, got {_short_repr(per_layer)}")
        shapes = [(dh, kv)] * L
        for key, value in per_layer.items():
            if not (isinstance(key, str) and key.isdigit() and int(key) < L) or not isinstance(value, dict):
                raise c.error(f"per_layer_config: {_short_repr(key)} is not a layer index with an object")
            extra = set(value) - {"head_dim", "num_key_value_heads"}
            if extra:
                raise c.error(f"per_layer_config: whatruns reads head_dim and num_key_value_heads per layer, "
                              f"not {', '.join(sorted(map(str, extra)))}")
            sub = _Config(value, f"gemma4_text config: per_layer_config[{key}]")
            shapes[int(key)] = (sub.size("head_dim", dh), sub.size("num_key_value_heads", kv))
    for layer_dh, layer_kv in shapes:
        if H % layer_kv:
            raise c.error(f"num_attention_heads ({H}) must be a multiple of {layer_kv} key/value heads")
    shared = c.size("num_kv_shared_layers", 0, zero_ok=True)
    window = c.size("sliding_window", 512)
    bias = c.flag("attention_bias", False)
    F = c.size("intermediate_size")
    double = c.flag("use_double_wide_mlp", False)
    act = _activation(c, "hidden_activation", "gelu_pytorch_tanh")
    moe = None
    if c.flag("enable_moe_block", False):
        E = c.size("num_experts")
        moe = dict(experts=E, top_k=_top_k(c, "top_k_experts", E), router="topk_softmax", router_scale=True,
                   expert=FFN(c.size("moe_intermediate_size"), activation=act), shared_experts=1)
    blocks = []
    for i, (t, (layer_dh, layer_kv)) in enumerate(zip(types, shapes)):
        reuse = i >= L - shared
        attn = Attention(heads=H, kv_heads=layer_kv, head_dim=layer_dh, bias=bias, out_bias=bias, qk_norm="head",
                         window=window if t == "sliding_attention" else 0, kv_shared=reuse,
                         values_from_keys=k_eq_v and t == "full_attention" and not reuse)
        dense = FFN(2 * F if double and reuse else F, activation=act)
        ffn = MoE(**moe, shared=dense) if moe else dense  # the dense FFN runs beside the experts, for every token
        blocks.append(Block(attn, ffn, post_norms=True, extra_norms=3 if moe else 0))
    P = c.size("hidden_size_per_layer_input", 256, zero_ok=True)
    return Transformer(vocab=c.size("vocab_size"), width=D, blocks=blocks, tied=c.flag("tie_word_embeddings", True),
                       per_layer_input=P, per_layer_vocab=c.size("vocab_size_per_layer_input", 262144) if P else 0,
                       name=c.name("gemma4_text"))


def _trimmed(c: _Config, key: str, L: int):
    """A per-layer list that may also cover the multi-token-prediction layers (L + ``num_nextn_predict_layers``
    entries): its first L."""
    v = c.raw(key, None)
    if v is None:
        return None
    mtp = c.size("num_nextn_predict_layers", 0, zero_ok=True)
    if not isinstance(v, list) or len(v) not in (L, L + mtp):
        raise c.error(f"{key} must be a list of {L} (or {L + mtp}) entries, got {_short_repr(v)}")
    return v[:L]


def _step3p5(d: dict) -> Transformer:
    """Step 3.5 / 3.7 Flash's text model (``step3p5``; the ``step3p7`` composite is read as its ``text_config``):
    full and sliding-window layers by ``layer_types`` (default all full), sliding layers with their own query
    heads (``num_sliding_attention_heads``, or the legacy ``attention_other_setting``), every layer a per-head
    sigmoid output gate (D -> H) and QK-norm per head, biases on q, k, v, o with ``attention_bias``; FFNs by
    ``mlp_layer_types`` (or the legacy ``moe_layers_enum`` of MoE layer indices; default MoE from layer 3): a
    MoE with one shared expert of ``share_expert_dim`` and a sigmoid router with a correction bias (a buffer),
    or a dense FFN; ``mlp_bias`` on the dense and shared FFNs. Lists may cover the multi-token-prediction layers
    too (their tail is dropped: those layers are not built). A file's ``per_layer_config`` gives layers their
    own query heads, key/value heads or head_dim."""
    # (num_local_experts is also a field of its own, which the later n_routed_experts default overwrites:
    # transformers reads no number of experts from it)
    c = _Config(d, "step3p5 config", {"n_routed_experts": "moe_num_experts",
                                       "num_key_value_heads": "num_attention_groups",
                                       "num_experts_per_tok": "moe_top_k", "share_expert_dim": "share_expert_dims"})
    D, H, L = c.size("hidden_size"), c.size("num_attention_heads"), c.size("num_hidden_layers")
    kv, dh = c.size("num_key_value_heads", 8), c.size("head_dim", 128)
    other = c.raw("attention_other_setting", None)
    sliding_heads = c.raw("num_sliding_attention_heads", None)
    if sliding_heads is None and isinstance(other, dict) and other.get("num_attention_heads") is not None:
        sliding_heads = _Config(other, "step3p5 config: attention_other_setting").size("num_attention_heads")
    sliding_heads = H if sliding_heads is None else c.size("num_sliding_attention_heads", sliding_heads)
    types = _trimmed(c, "layer_types", L) or ["full_attention"] * L
    if any(not isinstance(t, str) for t in types):
        raise c.error("layer_types must be strings")
    per_layer = c.raw("per_layer_config", None)
    # a per_layer_config replaces the sliding-head rule (the config class only fills it in when absent)
    shapes = [(sliding_heads if t == "sliding_attention" and per_layer is None else H, kv, dh) for t in types]
    if per_layer is not None:
        if not isinstance(per_layer, dict):
            raise c.error(f"per_layer_config must be an object, got {_short_repr(per_layer)}")
        for key, value in per_layer.items():
            if not (isinstance(key, str) and key.isdigit() and int(key) < L) or not isinstance(value, dict):
                raise c.error(f"per_layer_config: {_short_repr(key)} is not a layer index with an object")
            extra = set(value) - {"num_attention_heads", "num_key_value_heads", "head_dim"}
            if extra:
                raise c.error(f"per_layer_config: whatruns reads num_attention_heads, num_key_value_heads and "
                              f"head_dim per layer, not {', '.join(sorted(map(str, extra)))}")
            sub, i = _Config(value, f"step3p5 config: per_layer_config[{key}]"), int(key)
            shapes[i] = (sub.size("num_attention_heads", shapes[i][0]), sub.size("num_key_value_heads", shapes[i][1]),
                         sub.size("head_dim", shapes[i][2]))
    for heads, k, _ in shapes:
        if heads % k:
            raise c.error(f"{heads} query heads must be a multiple of {k} key/value heads")
    kinds = _trimmed(c, "mlp_layer_types", L)
    if kinds is None:
        enum = c.raw("moe_layers_enum", None)
        if enum is not None:
            try:
                listed = {int(i) for i in (enum.split(",") if isinstance(enum, str) else enum) if str(i).strip() != ""}
            except (TypeError, ValueError):
                raise c.error(f"moe_layers_enum must be layer indices, got {_short_repr(enum)}") from None
            kinds = ["sparse" if i in listed else "dense" for i in range(L)]
        else:
            kinds = ["sparse" if i >= 3 else "dense" for i in range(L)]
    if any(k not in ("dense", "sparse") for k in kinds):
        raise c.error("mlp_layer_types entries must be 'dense' or 'sparse'")
    bias, mlp_bias = c.flag("attention_bias", False), c.flag("mlp_bias", False)
    window = c.size("sliding_window", None, none=True) or 0
    moe = ffn = None
    if "sparse" in kinds:
        if "num_local_experts" in d and not any(k in d for k in ("n_routed_experts", "moe_num_experts")):
            raise c.error("n_routed_experts is missing (transformers takes no number of experts from "
                          "num_local_experts: its n_routed_experts default, 288, overwrites it)")
        E = c.size("n_routed_experts")
        moe = MoE(experts=E, top_k=_top_k(c, "num_experts_per_tok", E, 8, "n_routed_experts"), router="sigmoid_topk",
                  expert=FFN(c.size("moe_intermediate_size")), score_bias=True, score_bias_buffer=True,
                  shared=FFN(c.size("share_expert_dim"), bias=mlp_bias), shared_experts=1)
    if "dense" in kinds:
        ffn = FFN(c.size("intermediate_size"), bias=mlp_bias)
    # SwiGLU limits per layer (the function, not the count): swiglu_limits for the routed experts,
    # swiglu_limits_shared for the shared expert and the dense FFN; 0 or null: none
    limits, shared_limits = (_limits(c, key, L) for key in ("swiglu_limits", "swiglu_limits_shared"))

    def layer_ffn(i, kind):
        if kind == "sparse":
            return moe.with_(expert=moe.expert.with_(clamp=limits[i]), shared=moe.shared.with_(clamp=shared_limits[i]))
        return ffn.with_(clamp=shared_limits[i])

    blocks = [Block(Attention(heads=heads, kv_heads=k, head_dim=hd, bias=bias, out_bias=bias, qk_norm="head",
                              gate="head", window=window if t == "sliding_attention" else 0), layer_ffn(i, kind))
              for i, (t, (heads, k, hd), kind) in enumerate(zip(types, shapes, kinds))]
    return Transformer(vocab=c.size("vocab_size"), width=D, blocks=blocks, tied=c.flag("tie_word_embeddings", False),
                       name=c.name("step3p5"))


def _limits(c: _Config, key: str, L: int) -> List[float]:
    """A per-layer list of clamp bounds (Step 3.5's swiglu limits), 0.0 for none (absent, null or 0)."""
    v = _trimmed(c, key, L)
    if v is None:
        return [0.0] * L
    if any(x is not None and (isinstance(x, bool) or not isinstance(x, (int, float)) or x < 0) for x in v):
        raise c.error(f"{key} must be non-negative numbers or null, got {_short_repr(v)}")
    return [float(x or 0.0) for x in v]


def _dbrx(d: dict) -> Transformer:
    """DBRX: sizes nested in ``attn_config`` (``kv_n_heads``) and ``ffn_config`` (``ffn_hidden_size``,
    ``moe_num_experts``, ``moe_top_k``, ``ffn_act_fn``); LayerNorm without bias; a fused q/k/v
    projection without bias; every layer MoE. Tied embeddings are refused (as ``transformers`` does).
    The router takes the softmax over all experts and the top k; ``moe_normalize_expert_weights`` 1
    (the default) divides those by their sum (= top-k then softmax), null leaves them; other p-norms
    are refused. (transformers 5.24 wants 1.0 there and refuses a JSON 1; whatruns reads both.)"""
    c = _Config(d, "dbrx config", {"d_model": "hidden_size", "n_heads": "num_attention_heads",
                                   "n_layers": "num_hidden_layers"})
    D, H, L = c.size("d_model"), c.size("n_heads"), c.size("n_layers")
    sub = {}
    for key in ("attn_config", "ffn_config"):
        v = c.raw(key, None)
        if v is not None and not isinstance(v, dict):
            raise c.error(f"{key} must be an object, got {v!r}")
        sub[key] = v or {}
    a = _Config(sub["attn_config"], "dbrx config: attn_config")
    f = _Config(sub["ffn_config"], "dbrx config: ffn_config")
    if c.flag("tie_word_embeddings", False):
        raise c.error("tie_word_embeddings is not supported for DBRX (transformers refuses it too)")
    dh = _derived_head_dim(c, D, H, "d_model", "n_heads")
    kv = a.size("kv_n_heads", 1)
    if H % kv:
        raise a.error(f"n_heads ({H}) must be a multiple of kv_n_heads ({kv})")
    E = f.size("moe_num_experts")
    act_fn = f.raw("ffn_act_fn", None)
    if act_fn is None:
        act_fn = {"name": "silu"}
    if not isinstance(act_fn, dict):
        raise f.error(f"ffn_act_fn must be an object like {{\"name\": \"silu\"}}, got {act_fn!r}")
    act = _activation(_Config(act_fn, "dbrx config: ffn_config.ffn_act_fn"), "name", "silu")
    p = f.raw("moe_normalize_expert_weights", 1.0)
    if p is None:
        router = "softmax_topk"
    elif not isinstance(p, bool) and p == 1:
        router = "topk_softmax"  # top-k of the softmax, divided by its L1 norm
    else:
        raise f.error(f"moe_normalize_expert_weights {p!r}: only 1 (renormalise) or null are modelled")
    return Transformer(
        vocab=c.size("vocab_size"), width=D, layers=L,
        attention=Attention(heads=H, kv_heads=kv, head_dim=dh),
        moe=MoE(experts=E, top_k=_top_k(f, "moe_top_k", E, 1, "moe_num_experts"),
                expert=FFN(f.size("ffn_hidden_size"), activation=act), router=router),
        moe_layers=tuple(range(L)), norm=Norm("layernorm", bias=False), tied=False, name=c.name("dbrx"))


def _gpt_oss(d: dict) -> Transformer:
    """gpt-oss: biases on q, k, v, o (``attention_bias``), one learned sink logit per head, every
    layer MoE with biased experts (fused gate/up, clamped SwiGLU) and a biased router (top-k then
    softmax); sliding-window attention on the layers ``layer_types`` marks (by default every other)."""
    c = _Config(d, "gpt_oss config", {"num_local_experts": "num_experts"})
    D, H, L = c.size("hidden_size"), c.size("num_attention_heads"), c.size("num_hidden_layers")
    E = c.size("num_local_experts")
    bias = c.flag("attention_bias", True)
    types = _layer_types(c, L, ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(L)])
    sw, sl = _window(c, _sliding_window_value(c, 128),
                     [i for i, t in enumerate(types) if t == "sliding_attention"])
    return Transformer(
        vocab=c.size("vocab_size"), width=D, layers=L,
        attention=Attention(heads=H, kv_heads=_kv_heads(c, H, 8, nullable=False),
                            head_dim=_head_dim(c, D, H, 64, nullable=False),
                            bias=bias, out_bias=bias, sinks=True),
        moe=MoE(experts=E, top_k=_top_k(c, "num_experts_per_tok", E, 4, "num_local_experts"),
                expert=FFN(c.size("intermediate_size"), bias=True, activation="swiglu_oai"),
                router_bias=True, router="topk_softmax"),
        moe_layers=tuple(range(L)), tied=c.flag("tie_word_embeddings", False),
        sliding_window=sw, sliding_layers=sl, name=c.name("gpt_oss"))


def _llama4(d: dict) -> Transformer:
    """Llama 4's text model (``llama4_text``; the composite ``llama4`` config is read as its ``text_config``).

    MoE layers are ``moe_layers`` if given, else every ``interleave_moe_layer_step``-th layer
    (step - 1, 2·step - 1, ...). A MoE layer has routed experts of ``intermediate_size`` plus one
    shared expert of the same width, routed by top-k of the logits then a sigmoid (no
    renormalisation), the weight scaling the expert's input; dense layers have an FFN of ``intermediate_size_mlp``.
    Layers by ``no_rope_layers`` (1: rotary; default: every ``no_rope_layer_interval``-th layer, default 4, has
    none): the rotary layers attend within chunks of ``attention_chunk_size`` (by ``layer_types``, when given)
    and, with ``use_qk_norm``, L2-normalise q and k (no weights, no parameters); the others (NoPE) scale their
    queries by position (``attn_temperature_tuning``, ``floor_scale``, ``attn_scale``). The vision tower is not
    counted."""
    c = _Config(d, "llama4_text config")
    D, H, L = c.size("hidden_size"), c.size("num_attention_heads"), c.size("num_hidden_layers")
    listed = c.int_list("moe_layers", None)
    if listed is None:
        step = c.size("interleave_moe_layer_step", 1)
        listed = list(range(step - 1, L, step))
    moe_layers = tuple(i for i in range(L) if i in listed)
    act = _activation(c, "hidden_act", "silu")
    moe = None
    if moe_layers:
        E = c.size("num_local_experts")
        F = c.size("intermediate_size")
        moe = MoE(experts=E, top_k=_top_k(c, "num_experts_per_tok", E, 1, "num_local_experts"),
                  expert=FFN(F, activation=act), shared=FFN(F, activation=act), shared_experts=1,
                  router="topk_sigmoid", weight_input=True)
    ffn = FFN(c.size("intermediate_size_mlp"), activation=act) if len(moe_layers) < L else None
    bias = c.flag("attention_bias", False)
    interval = c.size("no_rope_layer_interval", 4)
    rope_layers = c.int_list("no_rope_layers", None) or [int((i + 1) % interval != 0) for i in range(L)]
    if len(rope_layers) < L:
        raise c.error(f"no_rope_layers has {len(rope_layers)} entries for {L} layers")
    chunk = c.size("attention_chunk_size", 8192, none=True)
    types = _layer_types(c, L, ["chunked_attention" if r and chunk is not None else "full_attention"
                                for r in rope_layers[:L]])
    if "chunked_attention" in types and chunk is None:
        raise c.error("layer_types has chunked_attention but attention_chunk_size is null")
    tuning = c.raw("attn_temperature_tuning", True)  # published: 4 (a truthy number)
    temperature = _float(c, "attn_scale", 0.1) if tuning else 0.0
    floor = c.size("floor_scale", 8192)
    qk_l2 = c.flag("use_qk_norm", True)
    attn = Attention(heads=H, kv_heads=_kv_heads(c, H, 8, nullable=False),
                     head_dim=_head_dim(c, D, H, 128, nullable=False), bias=bias, out_bias=bias)
    blocks = []
    for i in range(L):
        if rope_layers[i]:
            a = attn.with_(qk_l2norm=qk_l2, chunk=chunk if types[i] == "chunked_attention" else 0)
        else:
            a = attn.with_(rope=None, temperature=temperature, temperature_floor=floor,
                           chunk=chunk if types[i] == "chunked_attention" else 0)
        blocks.append(Block(a, moe if i in moe_layers else ffn))
    return Transformer(vocab=c.size("vocab_size"), width=D, blocks=blocks, tied=c.flag("tie_word_embeddings", False),
                       name=c.name("llama4_text"))


def _switch_sparse(layers: int, step) -> tuple:
    """The sparse layers of one Switch stack, as ``SwitchTransformersStack`` picks them:
    layer i is sparse when ``i % step == 1`` or ``step == 1`` (and none when ``step <= 0``).

    ``step`` is ``layers // num_sparse_layers`` -- so 6 sparse of 12 gives the odd layers -- or
    ``layers`` when ``num_sparse_layers`` is 0. That last case, meant to give no sparse layer,
    still makes layer 1 sparse (and every layer when the stack has one layer); we follow it.
    """
    return tuple(i for i in range(layers) if step > 0 and (i % step == 1 or step == 1))


def _switch(d: dict) -> Transformer:
    """Switch Transformer (T5 encoder-decoder): ungated FFNs of ``d_ff`` (``dense_act_fn``) without
    biases, T5's weight-only RMS LayerNorm, a relative-position bias in the first layer of each
    stack, top-1 routing with a router of ``num_experts`` (bias if ``router_bias``).
    ``num_sparse_encoder_layers`` / ``num_sparse_decoder_layers`` set each stack's sparse-layer step
    (an ``encoder_sparse_step`` / ``decoder_sparse_step`` in the file overrides it, as in
    ``transformers``). Expert capacity (``expert_capacity``, in tokens) is not carried over."""
    c = _Config(d, "switch_transformers config", {"d_model": "hidden_size", "num_heads": "num_attention_heads",
                                                  "num_layers": "num_hidden_layers"})
    D, H = c.size("d_model"), c.size("num_heads")
    enc = c.size("num_layers")
    dec = c.size("num_decoder_layers", 12, none=True)  # absent: 12 (the class default); null: num_layers
    pre = _pre_alias(c, "num_layers", 12)
    dec = pre if dec is None else dec
    steps = []
    for stack, n in (("encoder", pre), ("decoder", dec)):
        sparse = c.size(f"num_sparse_{stack}_layers", 3, zero_ok=True)
        default = n // sparse if sparse > 0 else n
        step = c.raw(f"{stack}_sparse_step", default)
        if isinstance(step, bool) or not isinstance(step, int):
            raise c.error(f"{stack}_sparse_step must be an integer, got {step!r}")
        steps.append(step)
    enc_moe, dec_moe = _switch_sparse(enc, steps[0]), _switch_sparse(dec, steps[1])
    if not c.flag("tie_word_embeddings", True):
        raise c.error("tie_word_embeddings false is not supported: transformers 5.24 then gives each stack its "
                      "own input embedding besides the unused shared one")
    ffn = FFN(c.size("d_ff"), gated=False, activation=_activation(c, "dense_act_fn", "relu"))
    moe = None
    if enc_moe or dec_moe:
        moe = MoE(experts=c.size("num_experts"), top_k=1, expert=ffn,
                  router_bias=c.flag("router_bias", False), router="softmax_topk")
    return Transformer(
        vocab=c.size("vocab_size"), width=D, layers=dec,
        attention=Attention(heads=H, kv_heads=H, head_dim=c.size("d_kv", 64)),
        ffn=ffn if (len(enc_moe) < enc or len(dec_moe) < dec) else None, moe=moe, moe_layers=dec_moe,
        tied=True, relative_buckets=c.size("relative_attention_num_buckets", 32, zero_ok=True),
        encoder_layers=enc, encoder_moe_layers=enc_moe, name=c.name("switch_transformers"))


# ---------------------------------------------------------------------------------------------
# the function: what changes no count but what a model computes (rope, norms' eps, scales, routers)

@dataclass(frozen=True)
class Function:
    """What one model type's config class and modeling code do beyond the counts, with their defaults:
    the key holding the norms' eps and its default, whether norms are (1 + w), the rope (none; one for
    all layers; or one per layer type, sliding vs full), its default theta, partial rotary factor and
    parameters, and the class's ``max_position_embeddings`` (read by the dynamic and YaRN scalings)."""

    eps_key: str = "rms_norm_eps"
    eps: float = 1e-6
    offset: bool = False
    rope: str = "one"  # "one", "per_type" (by layer type), "none"
    theta: float = 10000.0
    partial: Optional[float] = None
    default_rope: Tuple[Tuple[str, object], ...] = ()
    max_positions: int = 2048
    interleaved: bool = False  # rotate neighbouring pairs (DeepSeek's rope_interleave, its complex form)
    max_key: str = "max_position_embeddings"  # the key of the context length (DBRX: max_seq_len)
    default_partial: Optional[float] = None  # the partial rotary factor of a "default" rope that gives none (MiMo)
    mscales: bool = False  # longrope's short_mscale / long_mscale read (PhiMoE; the others ignore them)


FUNCTIONS: Dict[str, Function] = {
    "gpt2": Function("layer_norm_epsilon", 1e-5, rope="none", max_positions=1024),
    "llama": Function(),
    "mistral": Function(max_positions=131072),
    "qwen2": Function(max_positions=32768),
    "qwen3": Function(max_positions=32768),
    "mixtral": Function(eps=1e-5, theta=1e6, max_positions=131072),
    "qwen2_moe": Function(max_positions=32768),
    "qwen3_moe": Function(max_positions=32768),
    "olmoe": Function(eps=1e-5, max_positions=4096),
    "granitemoe": Function(),
    "minimax_m2": Function(theta=5e6, max_positions=196608),
    "glm4_moe": Function(eps=1e-5, partial=0.5, max_positions=131072),
    "phi3": Function(eps=1e-5, max_positions=4096),
    "phimoe": Function(eps=1e-5, theta=1e6, max_positions=131072, mscales=True),
    "deepseek_v2": Function(interleaved=True),
    "deepseek_v3": Function(max_positions=4096, interleaved=True),
    "kimi_k2": Function(max_positions=4096, interleaved=True),
    "deepseek_v32": Function(max_positions=163840, interleaved=True),
    "glm_moe_dsa": Function(eps=1e-5, max_positions=202752, interleaved=True),
    "gpt_oss": Function(eps=1e-5, theta=150000.0, max_positions=131072, default_rope=(
        ("rope_type", "yarn"), ("factor", 32.0), ("beta_fast", 32.0), ("beta_slow", 1.0), ("truncate", False),
        ("original_max_position_embeddings", 4096))),
    "gemma2": Function(offset=True, max_positions=8192),
    "gemma3_text": Function(offset=True, rope="per_type", max_positions=131072),
    "llama4_text": Function(eps=1e-5, theta=500000.0, max_positions=131072, interleaved=True),
    # DBRX: transformers 5.24 builds its rope from the top-level rope_theta / rope_parameters (default 10,000);
    # the published files' attn_config.rope_theta (500,000) is read by no computation
    "dbrx": Function(eps_key="", eps=1e-5, max_key="max_seq_len"),
    "t5": Function("layer_norm_epsilon", 1e-6, rope="none", max_positions=512),
    "bert": Function("layer_norm_eps", 1e-12, rope="none", max_positions=512),
    "step3p5": Function(eps=1e-5, offset=True, rope="step", max_positions=128000),
    # mRoPE: for text alone its three position streams are equal, which is plain rope
    "qwen3_vl_moe_text": Function(theta=500000.0, max_positions=128000),
    # (1 + w) norms (the DeltaNet's gated output norm excepted: plain w), rope on a quarter of each head
    "qwen3_next": Function(offset=True, partial=0.25, max_positions=32768),
    "nemotron_h": Function("layer_norm_epsilon", 1e-5, rope="none", max_positions=4096),  # attention without positions
    # Gemma 4: plain-w norms; sliding layers' rope over the head, the full layers' proportional (a quarter of the
    # frequencies, counted over the whole head)
    "gemma4_text": Function(rope="per_type", max_positions=131072, default_rope=(
        ("sliding_attention", {"rope_type": "default", "rope_theta": 10000.0}),
        ("full_attention", {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1e6}))),
    "qwen3_5_text": Function(offset=True, partial=0.25, max_positions=32768),
    "qwen3_5_moe_text": Function(offset=True, partial=0.25, max_positions=32768),
    # MiMo reads rope_parameters alone (per layer type; the files' rope_theta / swa_rope_theta keys are not read)
    "mimo_v2_flash": Function(eps=1e-5, rope="per_type", max_positions=131072, default_partial=0.334, default_rope=(
        ("full_attention", {"rope_type": "default", "rope_theta": 5e6, "partial_rotary_factor": 0.334}),
        ("sliding_attention", {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.334}))),
    "switch_transformers": Function("layer_norm_epsilon", 1e-6, rope="none", max_positions=512),
}
"""Per model type, what its function reads besides the counts (rope, norms' eps and form; see :class:`Function`):
every type of :data:`SUPPORTED`. The rest of the function -- scales, soft-caps, routers' details -- is
``_model_function``'s, or the reader's where it differs layer by layer (Llama 4, Step 3.5)."""


def rope_from(params: dict, head_dim: int, max_positions: int, interleaved: bool = False,
              where: str = "rope_parameters") -> Optional[Rope]:
    """A :class:`~whatruns.spec.Rope` from one standardised ``rope_parameters`` dict (rope_type, rope_theta,
    partial_rotary_factor, factor, ...), for heads of ``head_dim``."""
    c = _Config(params, where)
    kind = params.get("rope_type", params.get("type", "default"))
    if kind in ("su",):  # Phi-3's old name
        kind = "longrope"
    if kind not in ROPE_SCALINGS:
        raise c.error(f"rope_type {kind!r} is not one whatruns models ({', '.join(ROPE_SCALINGS)})")
    theta = params.get("rope_theta", 10000.0)
    partial = params.get("partial_rotary_factor", 1.0)
    for name, value in (("rope_theta", theta), ("partial_rotary_factor", partial)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise c.error(f"{name} must be a positive number, got {_short_repr(value)}")
    dim = int(head_dim * partial) // 2 * 2
    original = params.get("original_max_position_embeddings") or 0
    factor = params.get("factor")
    if factor is None:
        factor = (max_positions / original) if (kind in ("yarn", "longrope") and original) else 1.0

    def number(key, default):
        v = params.get(key, default)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise c.error(f"{key} must be a number, got {_short_repr(v)}")
        return float(v)

    try:
        return Rope(theta=float(theta), dim=dim if partial != 1.0 or kind == "proportional" else 0,
                    interleaved=interleaved, scaling=kind, factor=float(factor),
                    original_positions=int(original) if isinstance(original, (int, float)) else 0,
                    max_positions=max_positions, low_freq_factor=number("low_freq_factor", 1.0),
                    high_freq_factor=number("high_freq_factor", 4.0), beta_fast=number("beta_fast", 32.0),
                    beta_slow=number("beta_slow", 1.0), mscale=number("mscale", 0.0),
                    mscale_all_dim=number("mscale_all_dim", 0.0),
                    attention_factor=None if params.get("attention_factor") is None else number("attention_factor", 1.0),
                    truncate=params.get("truncate", True) is not False,
                    short_factor=tuple(params.get("short_factor") or ()), long_factor=tuple(params.get("long_factor") or ()),
                    short_mscale=None if params.get("short_mscale") is None else number("short_mscale", 1.0),
                    long_mscale=None if params.get("long_mscale") is None else number("long_mscale", 1.0))
    except SpecError as e:
        raise c.error(str(e)) from None


def _rope_parameters(c: _Config, f: Function) -> Dict[Optional[str], dict]:
    """The config's rope parameters as transformers 5 standardises them: ``rope_scaling`` (legacy) or
    ``rope_parameters``, completed by the top-level ``rope_theta`` and ``partial_rotary_factor`` and the
    class's defaults; one dict, or one per layer type (``{"full_attention": ..., "sliding_attention": ...}``)."""
    raw = c.raw("rope_scaling", None) or c.raw("rope_parameters", None)
    if raw is not None and not isinstance(raw, dict):
        raise c.error(f"rope_parameters must be an object, got {_short_repr(raw)}")
    params = dict(raw) if raw else dict(f.default_rope)
    nested = {k: v for k, v in params.items() if k in ("full_attention", "sliding_attention")}
    top_theta = c.raw("rope_theta", None)
    top_partial = c.raw("partial_rotary_factor", None)

    def complete(d: dict, theta) -> dict:
        d = dict(d)
        d.setdefault("rope_theta", theta)
        if top_partial is not None:
            d.setdefault("partial_rotary_factor", top_partial)
        elif f.partial is not None:
            d.setdefault("partial_rotary_factor", f.partial)
        if f.default_partial is not None and d.get("rope_type", d.get("type", "default")) == "default":
            d.setdefault("partial_rotary_factor", f.default_partial)
        if d.get("rope_type", d.get("type", "default")) in ("llama3", "yarn", "longrope"):
            top_original = c.raw("original_max_position_embeddings", None)
            if top_original is not None and "original_max_position_embeddings" not in d:
                d["original_max_position_embeddings"] = top_original
            d.setdefault("original_max_position_embeddings", c.raw("max_position_embeddings", f.max_positions))
        return d

    if f.rope == "step":
        return _step_rope_parameters(c, params, nested)
    if f.rope == "per_type":
        if nested:
            return {k: complete(v or {}, f.theta) for k, v in nested.items()}
        # Gemma 3's legacy keys: rope_theta (full layers, default 1e6), rope_local_base_freq (sliding, 1e4);
        # rope_scaling applies to the full layers only
        full = complete({**params, "rope_theta": top_theta if top_theta is not None else 1e6}, 1e6)
        local = complete({"rope_type": "default", "rope_theta": c.raw("rope_local_base_freq", 10000.0)}, 1e4)
        return {"full_attention": full, "sliding_attention": local}
    return {None: complete(params, top_theta if top_theta is not None else f.theta)}


def _step_rope_parameters(c: _Config, params: dict, nested: dict) -> Dict[Optional[str], dict]:
    """Step 3.5's rope per layer type, as its config class builds it: ``rope_parameters`` already per type (a
    file transformers saved), else from ``rope_theta`` (one number, or one per layer) and
    ``partial_rotary_factors`` (one per layer), each type's taken from its first layer, ``rope_scaling`` on
    the full-attention layers."""
    L = c.size("num_hidden_layers")
    types = _trimmed(c, "layer_types", L) or ["full_attention"] * L
    if nested and all(isinstance(nested.get(t), dict) for t in set(types)):
        return {t: dict(nested[t]) for t in set(types)}
    theta = c.raw("rope_theta", 10000.0)
    thetas = _trimmed(c, "rope_theta", L) if isinstance(theta, list) else [theta] * L
    partials = _trimmed(c, "partial_rotary_factors", L)
    scaling = c.raw("rope_scaling", None)
    out = {}
    for t in set(types):
        i = types.index(t)
        d = {"rope_type": "default", "rope_theta": thetas[i]}
        if partials:
            d["partial_rotary_factor"] = partials[i]
        if isinstance(scaling, dict) and t == "full_attention":
            d.update(scaling)
        out[t] = d
    return out


def _with_function(spec: Transformer, d: dict, model_type: str) -> Transformer:
    """The spec with what its config says of the function (rope, norm eps and form, scales, soft-caps,
    routing), for the model types of :data:`FUNCTIONS`; others unchanged."""
    f = FUNCTIONS.get(model_type)
    if f is None:
        return spec
    c = _Config(d, f"{model_type} config")
    eps = c.raw(f.eps_key, f.eps) if f.eps_key else f.eps  # no key: a fixed eps (DBRX's LayerNorm default)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise c.error(f"{f.eps_key} must be a positive number, got {_short_repr(eps)}")
    norm = replace(spec.norm, eps=float(eps), offset=f.offset)
    ropes = _rope_parameters(c, f) if f.rope != "none" else {}
    max_positions = c.raw(f.max_key, f.max_positions)
    if isinstance(max_positions, bool) or not isinstance(max_positions, int):
        max_positions = f.max_positions
    extra = _model_function(c, model_type, spec)

    def attention(a: Attention) -> Attention:
        if f.rope == "none" or a.rope is None:
            rope = None
        else:
            key = None if None in ropes else ("sliding_attention" if a.window else "full_attention")
            params = ropes.get(key)
            if params is not None and not f.mscales:
                params = {k: v for k, v in params.items() if k not in ("short_mscale", "long_mscale")}
            rope = None if params is None else rope_from(params, a.rope_head_dim if a.mla else a.head_dim,
                                                         max_positions, f.interleaved, f"{model_type} config: rope")
        return replace(a, rope=rope, **extra.get("attention", {}))

    def block(b: Block) -> Block:
        mixer = attention(b.mixer) if isinstance(b.mixer, Attention) else b.mixer
        cross = attention(b.cross) if b.cross is not None else None
        ffn = replace(b.ffn, **extra.get("moe", {})) if isinstance(b.ffn, MoE) and extra.get("moe") else b.ffn
        return replace(b, mixer=mixer, cross=cross, ffn=ffn)

    blocks = runs(Run(block(r.block), r.repeat) for r in spec.blocks)
    encoder = runs(Run(block(r.block), r.repeat) for r in spec.encoder)
    return replace(spec, blocks=blocks, encoder=encoder, norm=norm, **extra.get("model", {}))


def _float(c: _Config, key: str, default):
    v = c.raw(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise c.error(f"{key} must be a number, got {_short_repr(v)}")
    return float(v)


def _model_function(c: _Config, model_type: str, spec: Transformer) -> dict:
    """Per model type, the function fields beyond rope and norms: {"attention": {...}, "moe": {...},
    "model": {...}} to set on every attention, every MoE and the model."""
    D = spec.width
    out = {"attention": {}, "moe": {}, "model": {}}
    if model_type in ("deepseek_v3", "kimi_k2", "deepseek_v32", "glm_moe_dsa", "glm4_moe"):
        out["moe"] = dict(routed_scale=_float(c, "routed_scaling_factor", 2.5 if model_type != "glm4_moe" else 1.0),
                          groups=c.size("n_group", 8 if model_type in ("deepseek_v3", "kimi_k2", "deepseek_v32") else 1),
                          group_top_k=c.size("topk_group", 4 if model_type in ("deepseek_v3", "kimi_k2", "deepseek_v32")
                                             else 1),
                          renormalize=c.flag("norm_topk_prob", True))
    if model_type in ("deepseek_v3", "kimi_k2", "deepseek_v32", "glm_moe_dsa", "deepseek_v2"):
        # the softmax scale of MLA with YaRN: 1/sqrt(q head size) times mscale(factor, mscale_all_dim)^2
        a = next((r.block.mixer for r in spec.blocks if isinstance(r.block.mixer, Attention)), None)
        scale = None
        if a is not None:
            params = _rope_parameters(c, FUNCTIONS[model_type])[None]
            scale = a.head_dim ** -0.5
            if params.get("rope_type", params.get("type")) not in (None, "default"):
                m = params.get("mscale_all_dim", 0) or 0
                if m:
                    factor = params.get("factor", 1.0)
                    mscale = 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0
                    scale = scale * mscale * mscale
        out["attention"] = dict(scale=scale)
    if model_type == "deepseek_v2":
        out["moe"] = dict(routed_scale=_float(c, "routed_scaling_factor", 1.0))
    if model_type in ("gemma2", "gemma3_text"):
        q = c.raw("query_pre_attn_scalar", 256)
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not q > 0:
            raise c.error(f"query_pre_attn_scalar must be a positive number, got {_short_repr(q)}")
        softcap = _float(c, "attn_logit_softcapping", 50.0) if model_type == "gemma2" else None
        out["attention"] = dict(scale=float(q) ** -0.5, softcap=softcap or 0.0)
        final = _float(c, "final_logit_softcapping", 30.0 if model_type == "gemma2" else None)
        out["model"] = dict(embed_scale=D ** 0.5, logit_softcap=final or 0.0)
    if model_type == "granitemoe":
        out["attention"] = dict(scale=_float(c, "attention_multiplier", 1.0))
        out["model"] = dict(embed_scale=_float(c, "embedding_multiplier", 1.0),
                            residual_scale=_float(c, "residual_multiplier", 1.0),
                            logit_scale=1.0 / _float(c, "logits_scaling", 1.0))
    if model_type == "olmoe":
        clip = _float(c, "clip_qkv", None)
        out["attention"] = dict(clip_qkv=clip or 0.0)
    if model_type == "dbrx":  # q, k and v clamped (the fused projection's output)
        attn = c.raw("attn_config", None)
        clip = _float(_Config(attn, "dbrx config: attn_config"), "clip_qkv", None) if isinstance(attn, dict) else None
        out["attention"] = dict(clip_qkv=clip or 0.0)
    if model_type in ("t5", "switch_transformers"):
        # no 1/sqrt(d) in the scores; the decoder's output times D^-1/2 before the tied head (T5: unless the file
        # says tie_word_embeddings false, which transformers reads as scale_decoder_outputs false)
        out["attention"] = dict(scale=1.0)
        scaled = True
        if model_type == "t5":
            scaled = c.flag("scale_decoder_outputs", c.raw("tie_word_embeddings", None) is not False)
        out["model"] = dict(logit_scale=D ** -0.5 if scaled else 1.0,
                            relative_max_distance=c.size("relative_attention_max_distance", 128))
        if model_type == "switch_transformers":  # per sequence, an expert takes its first expert_capacity tokens
            out["moe"] = dict(expert_capacity=c.size("expert_capacity", 64))
    if model_type == "bert":  # each sublayer's LayerNorm after its residual add
        out["model"] = dict(post_norm=True)
    if model_type == "mimo_v2_flash":
        scale = _float(c, "attention_value_scale", 0.707)
        out["attention"] = dict(value_scale=1.0 if scale is None else scale)
        out["moe"] = dict(routed_scale=_float(c, "routed_scaling_factor", 1.0) or 1.0, groups=c.size("n_group", 1),
                          group_top_k=c.size("topk_group", 1), renormalize=c.flag("norm_topk_prob", True))
    if model_type == "step3p5":  # the softmax scale query_pre_attn_scalar^-1/2 (default: head_dim's)
        q = c.raw("query_pre_attn_scalar", None)
        q = c.size("head_dim", 128) if q is None else q
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not q > 0:
            raise c.error(f"query_pre_attn_scalar must be a positive number, got {_short_repr(q)}")
        out["attention"] = dict(scale=float(q) ** -0.5)
        out["moe"] = dict(routed_scale=_float(c, "moe_router_scaling_factor", 1.0))
    if model_type == "nemotron_h":
        out["moe"] = dict(routed_scale=_float(c, "routed_scaling_factor", 1.0), groups=c.size("n_group", 1),
                          group_top_k=c.size("topk_group", 1), renormalize=c.flag("norm_topk_prob", True))
    if model_type == "gemma4_text":  # scores unscaled (q and k are normed), values normed, the embedding times
        # sqrt(D), each layer's output times its learned scalar, the logits soft-capped
        out["attention"] = dict(scale=1.0, v_norm=True)
        out["model"] = dict(embed_scale=D ** 0.5, logit_softcap=_float(c, "final_logit_softcapping", None) or 0.0,
                            layer_scalar=True)
    if model_type == "phimoe":  # sparsemixer's threshold is the router's jitter (used at inference too)
        out["moe"] = dict(router_eps=_float(c, "router_jitter_noise", 0.01))
    return out


@dataclass(frozen=True)
class Wrapper:
    """A wrapper (multimodal) model type: the text model type its config class gives a ``text_config`` that
    names none, and whose ``tie_word_embeddings`` ties the LM head -- the text config's (``tie_from_wrapper``
    False: transformers' causal-LM view builds the text model alone) or the wrapper's own (True: its
    ForConditionalGeneration class holds the head; ``tie_default`` when the wrapper does not say)."""

    text_type: str
    tie_from_wrapper: bool = False
    tie_default: bool = False
    text_defaults: Tuple[Tuple[str, object], ...] = ()  # sizes its text config class fills in when absent
    force_text_type: bool = False  # the wrapper builds its own text class whatever text_config's model_type says
    text_overrides: Tuple[Tuple[str, object], ...] = ()  # what the wrapper's class does whatever text_config says


WRAPPERS: Dict[str, Wrapper] = {
    "llama4": Wrapper("llama4_text"),
    "kimi_k25": Wrapper("deepseek_v3", tie_from_wrapper=True, tie_default=True),
    "qwen3_vl_moe": Wrapper("qwen3_vl_moe_text", tie_from_wrapper=True),
    "qwen3_5": Wrapper("qwen3_5_text"),
    "qwen3_5_moe": Wrapper("qwen3_5_moe_text"),
    # Gemma3TextConfig's defaults: the published Gemma 3 4B/12B/27B files give only what differs from them
    "gemma4": Wrapper("gemma4_text", tie_from_wrapper=True, tie_default=True),
    "step3p7": Wrapper("step3p5", tie_from_wrapper=True, force_text_type=True),
    # (Gemma3ForConditionalGeneration applies no final soft-cap, whatever its text config says)
    "gemma3": Wrapper("gemma3_text", tie_from_wrapper=True, tie_default=True, text_defaults=(
        ("vocab_size", 262208), ("hidden_size", 2304), ("intermediate_size", 9216), ("num_hidden_layers", 26),
        ("num_attention_heads", 8)), text_overrides=(("final_logit_softcapping", None),)),
}
"""Wrapper (multimodal) model types whatruns knows. A wrapper not listed is read too when its ``text_config``
names a text model type whatruns reads (LLaVA-style), its tie flag taken from the text config."""

SUPPORTED: Dict[str, Callable[[dict], Transformer]] = {
    "gpt2": _gpt2,
    "llama": lambda d: _llama_like(d, "llama"),
    "mistral": lambda d: _llama_like(d, "mistral"),
    "qwen2": lambda d: _llama_like(d, "qwen2"),
    "qwen3": lambda d: _llama_like(d, "qwen3"),
    "mixtral": _mixtral,
    "qwen2_moe": lambda d: _qwen_moe(d, "qwen2_moe"),
    "qwen3_moe": lambda d: _qwen_moe(d, "qwen3_moe"),
    "deepseek_v2": lambda d: _deepseek(d, "deepseek_v2"),
    "deepseek_v3": lambda d: _deepseek(d, "deepseek_v3"),
    "deepseek_v32": lambda d: _deepseek(d, "deepseek_v32"),
    "glm_moe_dsa": lambda d: _deepseek(d, "glm_moe_dsa"),
    "kimi_k2": lambda d: _deepseek(d, "kimi_k2"),
    "qwen3_next": _qwen3_next,
    "qwen3_5_text": lambda d: _qwen3_next(d, "qwen3_5_text"),
    "qwen3_5_moe_text": lambda d: _qwen3_next(d, "qwen3_5_moe_text"),
    "qwen3_vl_moe_text": _qwen3_vl_moe_text,
    "mimo_v2_flash": _mimo_v2_flash,
    "nemotron_h": _nemotron_h,
    "glm4_moe": _glm4_moe,
    "minimax_m2": _minimax_m2,
    "phi3": _phi3,
    "phimoe": _phimoe,
    "gemma2": lambda d: _gemma(d, "gemma2"),
    "gemma3_text": lambda d: _gemma(d, "gemma3_text"),
    "olmoe": lambda d: _routed_only(d, "olmoe"),
    "granitemoe": lambda d: _routed_only(d, "granitemoe"),
    "t5": _t5,
    "bert": _bert,
    "gemma4_text": _gemma4_text,
    "step3p5": _step3p5,
    "dbrx": _dbrx,
    "gpt_oss": _gpt_oss,
    "llama4_text": _llama4,
    "switch_transformers": _switch,
}
"""The model types :func:`from_hf` reads, each with the function that reads it."""
