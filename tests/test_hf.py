"""whatruns.hf: Hugging Face configs -> specs, held to transformers itself.

The oracle is the model ``transformers`` 5.24 builds from the config, on the meta device (no memory,
no weights): its parameter count, with tied weights counted once, must equal ``count(load(cfg))``
exactly. It is checked on

* real, full-size ``config.json`` files (``tests/configs/``, at least one per model type) and every
  Hugging Face config the catalog holds (and its variants);
* small random configs, per model type, with random flags and layouts (hypothesis);
* random corruptions of those: each either loads to the oracle's count or raises a one-line
  ``SpecError`` -- never another exception, never a different number.

Bad inputs (files, JSON, model types, sizes, heads, top-k) each get a test of their message.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
import transformers
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from transformers import CONFIG_MAPPING, AutoModelForCausalLM

from whatruns import count, load
from whatruns.hf import SUPPORTED, WRAPPERS, from_hf, text_model
from whatruns.spec import SpecError, Transformer, from_dict, to_dict

transformers.logging.set_verbosity_error()
# DeepSeek with n_shared_experts 0 builds a shared FFN of width 0; torch warns, the count is right
pytestmark = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")

CONFIGS = Path(__file__).parent / "configs"
CONFIG_FILES = sorted(CONFIGS.glob("*.json"))

# Building every expert of a Switch Transformer as its own module is slow on the meta device
# (Switch-C, 2048 experts x 30 sparse layers = 61,440 modules: about 60 s on a 2-core machine). Above
# this many expert modules the default run checks the config's count by exact linearity in the number
# of experts instead (see test_catalog_config); WHATRUNS_SLOW_TESTS=1 builds the whole model.
MAX_EXPERT_MODULES = 4096
SLOW = os.environ.get("WHATRUNS_SLOW_TESTS") == "1"


# ---------------------------------------------------------------------------------------------
# the oracle

def _strict_types(cfg: dict) -> dict:
    """The config as transformers 5.24's strict config classes accept it. Two published fields have
    a JSON type those classes refuse, though no parameter depends on them: Llama 4's
    ``attn_temperature_tuning`` (the released Scout file has 4, the class wants a bool) and DBRX's
    ``moe_normalize_expert_weights`` (1, the class wants a float). whatruns reads the second as 1."""
    cfg = copy.deepcopy(cfg)
    text = cfg.get("text_config") if cfg.get("model_type") == "llama4" else cfg
    if isinstance(text, dict):
        v = text.get("attn_temperature_tuning")
        if isinstance(v, int) and not isinstance(v, bool):
            text["attn_temperature_tuning"] = bool(v)
    ffn = cfg.get("ffn_config") if cfg.get("model_type") == "dbrx" else None
    if isinstance(ffn, dict):
        v = ffn.get("moe_normalize_expert_weights")
        if isinstance(v, int) and not isinstance(v, bool):
            ffn["moe_normalize_expert_weights"] = float(v)
    return cfg


def hf_model(cfg: dict) -> torch.nn.Module:
    """The model transformers builds for ``cfg``, on the meta device."""
    model_type = cfg["model_type"]
    config = CONFIG_MAPPING[model_type].from_dict(_strict_types(cfg))
    with torch.device("meta"):
        if model_type == "switch_transformers":
            return transformers.SwitchTransformersForConditionalGeneration(config)
        if model_type == "llama4":  # the composite (vision + text) config: its text model
            return transformers.Llama4ForCausalLM(config.text_config)
        return AutoModelForCausalLM.from_config(config)


def oracle(cfg: dict) -> int:
    """Parameters transformers instantiates for ``cfg`` (``parameters()`` counts a tied weight once)."""
    return sum(p.numel() for p in hf_model(cfg).parameters())


def check(cfg: dict) -> Transformer:
    spec = load(cfg)
    assert count(spec).total_params == oracle(cfg)
    return spec


# ---------------------------------------------------------------------------------------------
# full-size published configs

def test_every_model_type_has_a_published_config():
    """Every model type whatruns reads has a stored published config (its own, or as a wrapper's text model)."""
    types = {text_model(json.loads(p.read_text()))[0]["model_type"] for p in CONFIG_FILES}
    assert types == set(SUPPORTED)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[p.stem for p in CONFIG_FILES])
def test_published_config(path):
    """Each stored config.json, loaded from its path, counts exactly what transformers builds."""
    cfg = json.loads(path.read_text())
    spec = load(path)
    assert count(spec).total_params == oracle(cfg)
    assert load(str(path)) == spec
    assert spec.name == cfg.get("_name_or_path", cfg["model_type"])


def test_published_layouts():
    """What the counts rest on, spelled out for a few models (structure, not totals)."""
    k2 = load(CONFIGS / "Kimi-K2-Instruct.json")
    assert k2.moe_layers == tuple(range(1, 61)) and k2.moe.experts == 384 and k2.moe.shared_experts == 1
    assert k2.attention.mla and k2.moe.router == "sigmoid_topk" and k2.moe.score_bias_buffer
    lite = load(CONFIGS / "DeepSeek-V2-Lite.json")
    assert lite.attention.q_lora_rank == 0 and lite.moe.router == "softmax_topk"
    assert lite.moe.shared.width == 2 * 1408
    scout = load(CONFIGS / "Llama-4-Scout-17B-16E.json")
    assert scout.moe_layers == tuple(range(48)) and scout.moe.shared is not None
    # its QK-norm is an L2 norm without weights (on the rotary layers); every fourth layer has no rotary (NoPE)
    mixers = [scout.layer(i).mixer for i in range(scout.layers)]
    assert not any(a.qk_norm for a in mixers) and [a.rope is None for a in mixers] == [i % 4 == 3 for i in range(48)]
    assert all(a.qk_l2norm and a.chunk == 8192 for a in mixers if a.rope is not None)
    switch = load(CONFIGS / "switch-base-8.json")
    assert switch.encoder_moe_layers == switch.moe_layers == (1, 3, 5, 7, 9, 11)
    oss = load(CONFIGS / "gpt-oss-20b.json")
    assert oss.sliding_window == 128 and oss.sliding_layers == tuple(range(0, 24, 2))
    assert oss.attention.sinks and oss.moe.router_bias and oss.moe.expert.activation == "swiglu_oai"
    gpt2 = load(CONFIGS / "gpt2.json")
    assert gpt2.tied and gpt2.positions == 1024 and gpt2.ffn.activation == "gelu_tanh"
    mistral = load(CONFIGS / "Mistral-7B-v0.1.json")
    assert mistral.sliding_window == 4096 and mistral.sliding_layers == tuple(range(32))
    qwen2 = load(CONFIGS / "Qwen2-7B.json")
    assert qwen2.attention.bias and not qwen2.attention.out_bias and qwen2.sliding_window == 0


# ---------------------------------------------------------------------------------------------
# the catalog's Hugging Face configs

def _catalog_configs():
    from whatruns import catalog
    out = []
    for name in catalog.names():
        entry = catalog.entry(name)
        for variant in [None, *entry.variants]:
            cfg = entry.config_for(variant)
            if "model_type" in cfg:
                out.append(pytest.param(name, variant, id=name if variant is None else f"{name}[{variant}]"))
    return out


def _expert_modules(cfg: dict) -> int:
    """Expert modules transformers builds one by one (Switch); the others store experts fused."""
    if cfg["model_type"] != "switch_transformers":
        return 0
    spec = load(cfg)
    return spec.moe.experts * (len(spec.moe_layers) + len(spec.encoder_moe_layers)) if spec.moe else 0


@pytest.mark.parametrize("name, variant", _catalog_configs())
def test_catalog_config(name, variant):
    from whatruns import catalog
    cfg = catalog.entry(name).config_for(variant)
    if variant is None:
        assert load(name) == load(cfg)
    if _expert_modules(cfg) <= MAX_EXPERT_MODULES or SLOW:
        check(cfg)
        return
    # Too many expert modules to build in the default run: transformers' parameters are exactly
    # linear in the number of experts (identical expert modules, a D x E router), so two small
    # builds give the count at any E. The full build runs with WHATRUNS_SLOW_TESTS=1.
    key = "num_experts"
    counts = [oracle({**cfg, key: e}) for e in (1, 2)]
    E = cfg[key]
    assert count(load(cfg)).total_params == counts[0] + (E - 1) * (counts[1] - counts[0])
    assert all(count(load({**cfg, key: e})).total_params == n for e, n in zip((1, 2), counts))


# ---------------------------------------------------------------------------------------------
# small random configs, one generator per model type

SIZE = st.integers(1, 6)
# a head's width: transformers refuses a rotary head_dim that is odd and above 4 (RoPE rotates pairs)
HD = st.sampled_from([1, 2, 3, 4, 6, 8])


@st.composite
def _heads(draw, max_groups=3, max_kv=3):
    """(query heads, key/value heads), the second dividing the first."""
    kv = draw(st.integers(1, max_kv))
    return kv * draw(st.integers(1, max_groups)), kv


def _maybe(draw, d: dict, key: str, strategy):
    """Set ``key`` or leave it out (so that the class default is exercised)."""
    if draw(st.booleans()):
        d[key] = draw(strategy)


def _common(draw, d: dict, tie=True):
    d["vocab_size"] = draw(st.integers(1, 40))
    if tie:
        _maybe(draw, d, "tie_word_embeddings", st.booleans())
    _maybe(draw, d, "_name_or_path", st.sampled_from(["", "org/model"]))
    return d


def _kv(draw, d: dict, H: int, K: int, default=None, nullable=True):
    """num_key_value_heads: given, null (-> H, where the class allows it), or absent when the class
    default fits."""
    choice = draw(st.sampled_from(["given", "null", "absent"] if nullable else ["given", "absent"]))
    if choice == "given" or (choice == "absent" and not (default is None and K == H or default == K)):
        d["num_key_value_heads"] = K
    elif choice == "null":
        d["num_key_value_heads"] = None
        K = H


ACTS = st.sampled_from(["silu", "gelu", "relu", "gelu_new", "gelu_pytorch_tanh"])


@st.composite
def gpt2_configs(draw):
    H = draw(st.integers(1, 4))
    d = _common(draw, {"model_type": "gpt2", "n_embd": H * draw(SIZE), "n_head": H, "n_layer": draw(st.integers(1, 3))})
    _maybe(draw, d, "n_positions", st.integers(1, 16))
    _maybe(draw, d, "n_inner", st.none() | st.integers(1, 24))
    _maybe(draw, d, "activation_function", ACTS)
    return d


@st.composite
def llama_like_configs(draw, model_type):
    H, K = draw(_heads())
    L = draw(st.integers(1, 4))
    d = _common(draw, {"model_type": model_type, "hidden_size": H * draw(HD), "num_attention_heads": H,
                       "num_hidden_layers": L, "intermediate_size": draw(st.integers(1, 24))})
    _kv(draw, d, H, K, {"llama": None, "mistral": 8, "qwen2": 32, "qwen3": 32}[model_type],
        nullable=model_type != "mistral")
    _maybe(draw, d, "head_dim", HD | (st.none() if model_type in ("llama", "mistral") else st.nothing()))
    _maybe(draw, d, "hidden_act", ACTS)
    for flag in ("attention_bias", "mlp_bias"):
        _maybe(draw, d, flag, st.booleans())  # read by some classes, ignored by others
    _maybe(draw, d, "sliding_window", st.none() | st.integers(1, 64))
    _maybe(draw, d, "use_sliding_window", st.booleans())
    _maybe(draw, d, "max_window_layers", st.integers(0, L + 1))
    if model_type in ("qwen2", "qwen3"):
        _maybe(draw, d, "layer_types", st.lists(st.sampled_from(["full_attention", "sliding_attention"]),
                                                min_size=L, max_size=L))
    return d


@st.composite
def mixtral_configs(draw):
    H, K = draw(_heads())
    E = draw(st.integers(1, 5))
    d = _common(draw, {"model_type": "mixtral", "hidden_size": H * draw(HD), "num_attention_heads": H,
                       "num_hidden_layers": draw(st.integers(1, 3)), "intermediate_size": draw(SIZE)})
    d[draw(st.sampled_from(["num_local_experts", "num_experts"]))] = E
    _kv(draw, d, H, K, 8, nullable=False)
    if E < 2 or draw(st.booleans()):
        d["num_experts_per_tok"] = draw(st.integers(1, E))
    _maybe(draw, d, "head_dim", st.none() | HD)
    _maybe(draw, d, "sliding_window", st.none() | st.integers(1, 64))
    return d


@st.composite
def qwen_moe_configs(draw, model_type):
    H, K = draw(_heads())
    L = draw(st.integers(1, 5))
    E = draw(st.integers(0, 5))
    d = _common(draw, {"model_type": model_type, "hidden_size": H * draw(HD), "num_attention_heads": H,
                       "num_hidden_layers": L, "intermediate_size": draw(SIZE), "num_experts": E,
                       "moe_intermediate_size": draw(SIZE), "num_experts_per_tok": draw(st.integers(1, max(E, 1)))})
    _kv(draw, d, H, K, 16 if model_type == "qwen2_moe" else 4, nullable=False)
    _maybe(draw, d, "head_dim", HD)
    _maybe(draw, d, "decoder_sparse_step", st.integers(1, 3))
    _maybe(draw, d, "mlp_only_layers", st.none() | st.lists(st.integers(0, L + 1), max_size=3))
    _maybe(draw, d, "norm_topk_prob", st.booleans())
    _maybe(draw, d, "use_sliding_window", st.booleans())
    _maybe(draw, d, "hidden_act", ACTS)
    if model_type == "qwen2_moe":
        d["shared_expert_intermediate_size"] = draw(SIZE)
        _maybe(draw, d, "qkv_bias", st.booleans())
        _maybe(draw, d, "max_window_layers", st.integers(0, L + 1))
    else:
        _maybe(draw, d, "attention_bias", st.booleans())
    return d


@st.composite
def deepseek_configs(draw, model_type):
    v3 = model_type == "deepseek_v3"
    H = draw(st.integers(1, 4))
    L = draw(st.integers(1, 4))
    E = draw(st.integers(1, 5))
    d = _common(draw, {"model_type": model_type, "hidden_size": H * draw(HD), "num_attention_heads": H,
                       "num_hidden_layers": L, "intermediate_size": draw(SIZE), "moe_intermediate_size": draw(SIZE),
                       "n_routed_experts": E, "num_experts_per_tok": draw(st.integers(1, E)),
                       "kv_lora_rank": draw(SIZE), "qk_rope_head_dim": draw(st.integers(1, 4)),
                       "qk_nope_head_dim": draw(st.integers(1, 4)), "v_head_dim": draw(st.integers(1, 4))})
    if v3 or draw(st.booleans()):
        d["num_key_value_heads"] = H
    d["q_lora_rank"] = draw(st.none() | SIZE)
    _maybe(draw, d, "first_k_dense_replace", st.integers(0, L + 1))
    _maybe(draw, d, "attention_bias", st.booleans())
    _maybe(draw, d, "hidden_act", ACTS)
    if v3:
        _maybe(draw, d, "n_shared_experts", st.integers(0, 2))
    else:
        _maybe(draw, d, "mlp_bias", st.booleans())
        _maybe(draw, d, "n_shared_experts", st.integers(0 if not d.get("mlp_bias") else 1, 2))
    return d


@st.composite
def dbrx_configs(draw):
    H, K = draw(_heads())
    E = draw(st.integers(1, 5))
    ffn = {"ffn_hidden_size": draw(SIZE), "moe_num_experts": E}
    _maybe(draw, ffn, "moe_top_k", st.integers(1, E))
    _maybe(draw, ffn, "moe_normalize_expert_weights", st.none() | st.just(1.0))
    _maybe(draw, ffn, "ffn_act_fn", st.builds(lambda a: {"name": a}, ACTS))
    attn = {"rope_theta": 10000}  # transformers 5.24's DBRX attention reads it unconditionally
    if K > 1 or draw(st.booleans()):
        attn["kv_n_heads"] = K
    return _common(draw, {"model_type": "dbrx", "d_model": H * draw(SIZE), "n_heads": H,
                          "n_layers": draw(st.integers(1, 3)), "attn_config": attn, "ffn_config": ffn}, tie=False)


@st.composite
def gpt_oss_configs(draw):
    H, K = draw(_heads())
    L = draw(st.integers(1, 4))
    E = draw(st.integers(1, 5))
    d = _common(draw, {"model_type": "gpt_oss", "hidden_size": H * draw(HD), "num_attention_heads": H,
                       "num_hidden_layers": L, "intermediate_size": draw(SIZE), "num_local_experts": E,
                       "num_experts_per_tok": draw(st.integers(1, E))})
    _kv(draw, d, H, K, 8, nullable=False)
    _maybe(draw, d, "head_dim", HD)
    _maybe(draw, d, "attention_bias", st.booleans())
    _maybe(draw, d, "sliding_window", st.none() | st.integers(1, 64))
    _maybe(draw, d, "layer_types", st.lists(st.sampled_from(["full_attention", "sliding_attention"]),
                                            min_size=L, max_size=L))
    return d


@st.composite
def llama4_text_configs(draw):
    H, K = draw(_heads())
    L = draw(st.integers(1, 5))
    E = draw(st.integers(1, 4))
    d = _common(draw, {"model_type": "llama4_text", "hidden_size": H * draw(HD), "num_attention_heads": H,
                       "num_hidden_layers": L, "intermediate_size": draw(SIZE), "intermediate_size_mlp": draw(SIZE),
                       "num_local_experts": E})
    _kv(draw, d, H, K, 8, nullable=False)
    _maybe(draw, d, "num_experts_per_tok", st.integers(1, E))
    _maybe(draw, d, "head_dim", HD)
    if draw(st.booleans()):
        d["moe_layers"] = draw(st.lists(st.integers(0, L - 1), unique=True, max_size=L))
    else:
        _maybe(draw, d, "interleave_moe_layer_step", st.integers(1, 3))
    for flag in ("attention_bias", "use_qk_norm"):
        _maybe(draw, d, flag, st.booleans())
    return d


@st.composite
def llama4_configs(draw):
    text = draw(llama4_text_configs())
    text.pop("model_type")
    return {"model_type": "llama4", "text_config": text}


@st.composite
def switch_configs(draw):
    H = draw(st.integers(1, 4))
    d = _common(draw, {"model_type": "switch_transformers", "d_model": draw(st.integers(1, 12)), "num_heads": H,
                       "d_kv": draw(SIZE), "d_ff": draw(SIZE), "num_layers": draw(st.integers(1, 4))}, tie=False)
    _maybe(draw, d, "num_decoder_layers", st.none() | st.integers(1, 4))
    for stack in ("encoder", "decoder"):
        _maybe(draw, d, f"num_sparse_{stack}_layers", st.integers(0, 5))
        _maybe(draw, d, f"{stack}_sparse_step", st.integers(-1, 3))
    d["num_experts"] = draw(st.integers(1, 4))
    _maybe(draw, d, "router_bias", st.booleans())
    _maybe(draw, d, "relative_attention_num_buckets", st.integers(0, 8))
    _maybe(draw, d, "dense_act_fn", ACTS)
    _maybe(draw, d, "tie_word_embeddings", st.just(True))
    return d


GENERATORS = {
    "gpt2": gpt2_configs(),
    "llama": llama_like_configs("llama"),
    "mistral": llama_like_configs("mistral"),
    "qwen2": llama_like_configs("qwen2"),
    "qwen3": llama_like_configs("qwen3"),
    "mixtral": mixtral_configs(),
    "qwen2_moe": qwen_moe_configs("qwen2_moe"),
    "qwen3_moe": qwen_moe_configs("qwen3_moe"),
    "deepseek_v2": deepseek_configs("deepseek_v2"),
    "deepseek_v3": deepseek_configs("deepseek_v3"),
    "dbrx": dbrx_configs(),
    "gpt_oss": gpt_oss_configs(),
    "llama4_text": llama4_text_configs(),
    "llama4": llama4_configs(),
    "switch_transformers": switch_configs(),
}


def test_a_generator_per_model_type():
    """Random configs of every model type whatruns reads, and of every wrapper it knows."""
    assert set(GENERATORS) == set(SUPPORTED) | set(WRAPPERS)


@pytest.mark.parametrize("model_type", sorted(GENERATORS))
def test_random_configs_count_what_transformers_builds(model_type):
    @settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(GENERATORS[model_type])
    def run(cfg):
        spec = check(cfg)
        assert count(from_dict(to_dict(spec))) == count(spec)  # the library's own format round-trips

    run()


# ---------------------------------------------------------------------------------------------
# corrupted configs: a spec that counts what transformers builds, or a one-line SpecError

JSON_VALUES = (st.none() | st.booleans() | st.integers(-3, 9) | st.sampled_from([0.0, 2.0, 2.5, float("nan")])
               | st.sampled_from(["", "2", "silu", "sliding_attention"]) | st.lists(st.integers(-1, 4), max_size=4)
               | st.just({}) | st.just({"name": "relu"}))


@pytest.mark.parametrize("model_type", sorted(GENERATORS))
def test_corrupted_configs_load_exactly_or_fail_in_one_line(model_type):
    @settings(max_examples=10, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(GENERATORS[model_type], st.data())
    def run(cfg, data):
        target = cfg["text_config"] if model_type == "llama4" else cfg
        if model_type == "dbrx" and data.draw(st.booleans()):
            target = target[data.draw(st.sampled_from(["attn_config", "ffn_config"]))]
        keys = sorted(k for k in target if k != "model_type")
        key = data.draw(st.sampled_from(keys))
        target[key] = data.draw(JSON_VALUES)
        try:
            spec = from_hf(cfg)
        except SpecError as e:
            assert "\n" not in str(e) and str(e)
            return
        try:
            expected = oracle(cfg)
        except Exception:  # transformers refuses (or cannot build) this config: nothing to compare
            assume(False)
        assert count(spec).total_params == expected

    run()


# ---------------------------------------------------------------------------------------------
# bad input: one clear line each

def _error(source) -> str:
    with pytest.raises(SpecError) as e:
        load(source)
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


LLAMA = json.loads((CONFIGS / "Meta-Llama-3-8B.json").read_text())


def test_missing_file(tmp_path):
    assert "no such file" in _error(tmp_path / "nope.json")
    assert "no such file" in _error(str(tmp_path / "nope.json"))
    assert "no such file" in _error(tmp_path)  # a folder without a config.json


def test_folder_with_a_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA))
    assert load(tmp_path) == load(LLAMA)


def test_unreadable_file(tmp_path):
    p = tmp_path / "config.json"
    p.write_bytes(b"\xff\xfe\x00garbage")
    assert "cannot read" in _error(p)


def test_malformed_json(tmp_path):
    p = tmp_path / "config.json"
    p.write_text('{"model_type": "llama",')
    msg = _error(p)
    assert "not valid JSON" in msg and "line 1" in msg


@pytest.mark.parametrize("text, what", [("[1, 2]", "an array"), ('"llama"', "a string"), ("3", "a number"),
                                        ("null", "null")])
def test_json_that_is_not_an_object(tmp_path, text, what):
    p = tmp_path / "config.json"
    p.write_text(text)
    assert f"expected a JSON object, got {what}" in _error(p)


def test_not_a_source():
    assert "cannot load a list" in _error([LLAMA])
    with pytest.raises(SpecError, match="must be a JSON object"):
        from_hf([LLAMA])


def test_unknown_catalog_name():
    msg = _error("no-such-model")
    assert "no-such-model" in msg


def test_no_model_type():
    cfg = {k: v for k, v in LLAMA.items() if k != "model_type"}
    msg = _error(cfg)
    assert "no model_type" in msg and "llama" in msg and "switch_transformers" in msg


@pytest.mark.parametrize("model_type", ["rwkv", "", None, 3, ["llama"]])
def test_unknown_model_type(model_type):
    msg = _error({**LLAMA, "model_type": model_type})
    assert "unknown model_type" in msg and ", ".join(sorted(SUPPORTED)) in msg


def test_own_format():
    spec = load(LLAMA)
    assert load(to_dict(spec)) == spec
    assert "unknown spec kind" in _error({"whatruns": "rnn"})


SIZES = [  # (config, key holding a size), across model types and nesting
    (LLAMA, "hidden_size"), (LLAMA, "vocab_size"), (LLAMA, "num_hidden_layers"), (LLAMA, "intermediate_size"),
    (LLAMA, "num_attention_heads"),
    (json.loads((CONFIGS / "gpt2.json").read_text()), "n_embd"),
    (json.loads((CONFIGS / "Qwen3-30B-A3B.json").read_text()), "moe_intermediate_size"),
    (json.loads((CONFIGS / "Kimi-K2-Instruct.json").read_text()), "moe_intermediate_size"),
    (json.loads((CONFIGS / "Kimi-K2-Instruct.json").read_text()), "kv_lora_rank"),
    (json.loads((CONFIGS / "switch-base-8.json").read_text()), "d_ff"),
    (json.loads((CONFIGS / "Mixtral-8x22B-v0.1.json").read_text()), "num_local_experts"),
]


@pytest.mark.parametrize("cfg, key", SIZES, ids=[f"{c['model_type']}.{k}" for c, k in SIZES])
def test_size_missing(cfg, key):
    without = {k: v for k, v in cfg.items() if k != key}
    if key == "kv_lora_rank":  # a head shape, like head_dim: the class default (512) applies
        assert load(without) == load(cfg)
        return
    assert f"{key} is missing" in _error(without)


@pytest.mark.parametrize("value", [4096.0, "4096", True, None, [4096]])
@pytest.mark.parametrize("cfg, key", SIZES, ids=[f"{c['model_type']}.{k}" for c, k in SIZES])
def test_size_not_an_integer(cfg, key, value):
    assert f"{key} must be an integer, got {value!r}" in _error({**cfg, key: value})


@pytest.mark.parametrize("value", [0, -1])
@pytest.mark.parametrize("cfg, key", SIZES, ids=[f"{c['model_type']}.{k}" for c, k in SIZES])
def test_size_not_positive(cfg, key, value):
    assert f"{key} must be positive, got {value}" in _error({**cfg, key: value})


def test_nested_sizes():
    dbrx = json.loads((CONFIGS / "dbrx-base.json").read_text())
    bad = copy.deepcopy(dbrx)
    bad["ffn_config"]["ffn_hidden_size"] = 10752.0
    assert "dbrx config: ffn_config: ffn_hidden_size must be an integer" in _error(bad)
    bad = copy.deepcopy(dbrx)
    del bad["ffn_config"]["moe_num_experts"]
    assert "moe_num_experts is missing" in _error(bad)
    scout = json.loads((CONFIGS / "Llama-4-Scout-17B-16E.json").read_text())
    bad = copy.deepcopy(scout)
    bad["text_config"]["hidden_size"] = "5120"
    assert "llama4 config: text_config: hidden_size must be an integer" in _error(bad)
    assert "text_config must be an object" in _error({**scout, "text_config": None})


@pytest.mark.parametrize("cfg", [
    {"model_type": "gpt2", "vocab_size": 10, "n_embd": 10, "n_head": 3, "n_layer": 1},
    {"model_type": "mistral", "vocab_size": 10, "hidden_size": 10, "num_attention_heads": 3, "num_hidden_layers": 1,
     "num_key_value_heads": 1, "intermediate_size": 4},
    {"model_type": "qwen2", "vocab_size": 10, "hidden_size": 10, "num_attention_heads": 3, "num_hidden_layers": 1,
     "num_key_value_heads": 1, "intermediate_size": 4},
    {"model_type": "dbrx", "vocab_size": 10, "d_model": 10, "n_heads": 3, "n_layers": 1,
     "ffn_config": {"ffn_hidden_size": 4, "moe_num_experts": 2}},
    # Llama insists even when head_dim is given (LlamaConfig.validate_architecture)
    {"model_type": "llama", "vocab_size": 10, "hidden_size": 10, "num_attention_heads": 3, "num_hidden_layers": 1,
     "head_dim": 4, "intermediate_size": 4},
], ids=lambda c: c["model_type"])
def test_heads_that_do_not_divide_the_width(cfg):
    assert "must be a multiple of" in _error(cfg)


def test_a_given_head_dim_needs_no_divisibility():
    cfg = {"model_type": "qwen3", "vocab_size": 10, "hidden_size": 10, "num_attention_heads": 3,
           "num_key_value_heads": 1, "num_hidden_layers": 1, "head_dim": 4, "intermediate_size": 4}
    assert check(cfg).attention.head_dim == 4


@pytest.mark.parametrize("name", ["Meta-Llama-3-8B", "Mistral-7B-v0.1", "Qwen2-7B", "Qwen3-30B-A3B", "gpt-oss-20b",
                                  "Mixtral-8x22B-v0.1", "Llama-4-Scout-17B-16E-text"])
def test_kv_heads_that_do_not_divide_heads(name):
    cfg = json.loads((CONFIGS / f"{name}.json").read_text())
    msg = _error({**cfg, "num_key_value_heads": 9})
    assert f"num_attention_heads ({cfg['num_attention_heads']}) must be a multiple of num_key_value_heads (9)" in msg


def test_class_default_kv_heads_are_read():
    """Absent, num_key_value_heads takes the class default, which is not always the number of heads:
    32 for Qwen2 (so 4 heads cannot do without it), 8 for Mistral. null means "as many as heads"
    where the class says so (Qwen2), and is refused where the class refuses it (Mistral)."""
    cfg = {"model_type": "qwen2", "vocab_size": 10, "hidden_size": 16, "num_attention_heads": 4,
           "num_hidden_layers": 1, "intermediate_size": 4}
    assert "num_key_value_heads (32)" in _error(cfg)
    assert check({**cfg, "num_key_value_heads": None}).attention.kv_heads == 4
    cfg = {**cfg, "model_type": "mistral", "num_attention_heads": 16, "hidden_size": 64}
    assert check(cfg).attention.kv_heads == 8
    assert "num_key_value_heads must be an integer, got None" in _error({**cfg, "num_key_value_heads": None})


def test_mla_kv_heads_must_match():
    cfg = json.loads((CONFIGS / "Kimi-K2-Instruct.json").read_text())
    assert "must equal num_attention_heads" in _error({**cfg, "num_key_value_heads": 8})
    v3 = {k: v for k, v in cfg.items() if k != "num_key_value_heads"}  # DeepseekV3Config's default is 128
    assert "num_key_value_heads (128)" in _error(v3)


@pytest.mark.parametrize("name, key, experts", [
    ("Mixtral-8x22B-v0.1", "num_experts_per_tok", 8), ("Qwen1.5-MoE-A2.7B", "num_experts_per_tok", 60),
    ("Qwen3-30B-A3B", "num_experts_per_tok", 128), ("DeepSeek-V2-Lite", "num_experts_per_tok", 64),
    ("Kimi-K2-Instruct", "num_experts_per_tok", 384), ("gpt-oss-20b", "num_experts_per_tok", 32),
    ("Llama-4-Scout-17B-16E-text", "num_experts_per_tok", 16),
])
def test_top_k_above_the_experts(name, key, experts):
    cfg = json.loads((CONFIGS / f"{name}.json").read_text())
    msg = _error({**cfg, key: experts + 1})
    assert f"{key} ({experts + 1}) cannot exceed the number of experts" in msg


def test_top_k_above_the_experts_nested():
    cfg = json.loads((CONFIGS / "dbrx-base.json").read_text())
    cfg["ffn_config"]["moe_top_k"] = 17
    assert "moe_top_k (17) cannot exceed the number of experts, moe_num_experts (16)" in _error(cfg)


@pytest.mark.parametrize("key, value", [("attention_bias", 1), ("tie_word_embeddings", "false"),
                                        ("mlp_bias", None)])
def test_flags_must_be_booleans(key, value):
    assert f"{key} must be true or false" in _error({**LLAMA, key: value})


def test_unknown_activation():
    assert "hidden_act 'quick_gelu'" in _error({**LLAMA, "hidden_act": "quick_gelu"})


def test_things_transformers_refuses_or_whatruns_cannot_model():
    dbrx = json.loads((CONFIGS / "dbrx-base.json").read_text())
    assert "tie_word_embeddings is not supported for DBRX" in _error({**dbrx, "tie_word_embeddings": True})
    switch = json.loads((CONFIGS / "switch-base-8.json").read_text())
    assert "tie_word_embeddings false is not supported" in _error({**switch, "tie_word_embeddings": False})
    gpt2 = json.loads((CONFIGS / "gpt2.json").read_text())
    assert "add_cross_attention" in _error({**gpt2, "add_cross_attention": True})
    lite = json.loads((CONFIGS / "DeepSeek-V2-Lite.json").read_text())
    assert "n_shared_experts 0 with mlp_bias" in _error({**lite, "n_shared_experts": 0, "mlp_bias": True})
    assert "num_experts_per_tok is missing" in _error({k: v for k, v in lite.items() if k != "num_experts_per_tok"})
    assert "q_lora_rank must be positive, got 0" in _error({**lite, "q_lora_rank": 0})  # null means none


def test_aliases_must_agree():
    mixtral = json.loads((CONFIGS / "Mixtral-8x22B-v0.1.json").read_text())
    assert load({**mixtral, "num_experts": 8}) == load(mixtral)
    assert "disagree" in _error({**mixtral, "num_experts": 4})


# ---------------------------------------------------------------------------------------------
# conventions worth a test of their own

def test_switch_sparse_layers_follow_transformers():
    """num_sparse_*_layers = 0 is meant to give no sparse layer, yet transformers makes layer 1 sparse
    (and, in a one-layer stack, layer 0); whatruns follows what is built."""
    base = {"model_type": "switch_transformers", "vocab_size": 10, "d_model": 8, "num_heads": 2, "d_kv": 4,
            "d_ff": 8, "num_layers": 4, "num_decoder_layers": 1, "num_experts": 2,
            "num_sparse_encoder_layers": 0, "num_sparse_decoder_layers": 0}
    spec = check(base)
    assert spec.encoder_moe_layers == (1,) and spec.moe_layers == (0,)
    spec = check({**base, "num_sparse_encoder_layers": 8})  # 4 // 8 = 0: no sparse layer
    assert spec.encoder_moe_layers == ()


def test_deepseek_v3_score_bias_is_a_buffer():
    cfg = json.loads((CONFIGS / "Kimi-K2-Instruct.json").read_text())
    cfg["num_hidden_layers"] = 3
    spec = check(cfg)
    router = next(m for n, m in hf_model(cfg).named_modules() if n.endswith("mlp.gate"))
    assert "e_score_correction_bias" in dict(router.named_buffers())
    assert spec.moe.score_bias and spec.moe.score_bias_buffer
    assert count(spec.with_(moe=spec.moe.__class__(**{**spec.moe.__dict__, "score_bias_buffer": False}))
                 ).total_params == count(spec).total_params + 2 * 384


def test_readme_lists_every_model_type_and_wrapper():
    import re
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    listed = set(re.findall(r"[a-z0-9_]+", readme[readme.index("for 35 model types"):readme.index("counted as its text")]))
    assert set(SUPPORTED) | set(WRAPPERS) <= listed
    assert f"for {len(SUPPORTED)} model types" in readme
