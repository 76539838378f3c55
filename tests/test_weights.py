"""The built models are the real ones: transformers' model of a config, its weights loaded into
``whatruns.build`` of the same config, gives the same logits, and transformers' own model runs the FLOPs
``count()`` reports (a second, independent oracle for the counts: torch's counter on the reference
implementation).

Tolerance: logits agree to 1e-4 of the largest logit (float32; what is seen is ~2e-7, gemm rounding).
Routing can tie: two experts with scores within float rounding of each other may be picked in either order
by the two implementations, and then the outputs differ by more than rounding. A drawn example whose
routing is that close (a margin below 1e-5 between the k-th and the next expert's score, measured on the
whatruns model) is discarded (hypothesis ``assume``) rather than the tolerance loosened.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from transformers import CONFIG_MAPPING, AutoModelForCausalLM

from whatruns import count, load
from whatruns.measure import count_flops
from whatruns.nn import MoELayer
from whatruns.weights import FAMILIES, from_transformers

transformers.logging.set_verbosity_error()
torch.set_num_threads(1)

V = 40  # vocabulary of every drawn config
# derandomized: the same examples on every run (CI starts with no hypothesis database)
SETTINGS = settings(max_examples=5, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def heads(draw, max_kv=2, groups=2):
    kv = draw(st.integers(1, max_kv))
    return kv * draw(st.integers(1, groups)), kv


@st.composite
def rope_scaling(draw, max_positions=32):
    kind = draw(st.sampled_from(["none", "linear", "dynamic", "yarn", "llama3"]))
    if kind == "none":
        return {}
    d = {"rope_type": kind, "factor": draw(st.sampled_from([2.0, 4.0]))}
    if kind in ("yarn", "llama3"):
        d["original_max_position_embeddings"] = 8
    if kind == "llama3":
        d.update(low_freq_factor=1.0, high_freq_factor=4.0)
    return {"rope_scaling": d, "max_position_embeddings": max_positions}


@st.composite
def llama_like(draw, model_type):
    H, K = draw(heads())
    dh = draw(st.sampled_from([4, 8]))
    cfg = dict(vocab_size=V, hidden_size=H * dh, num_hidden_layers=draw(st.integers(1, 2)), num_attention_heads=H,
               num_key_value_heads=K, intermediate_size=draw(st.integers(4, 16)), pad_token_id=0,
               rope_theta=draw(st.sampled_from([100.0, 10000.0])), rms_norm_eps=draw(st.sampled_from([1e-6, 1e-5])),
               tie_word_embeddings=draw(st.booleans()))
    cfg.update(draw(rope_scaling()))
    if model_type == "llama":
        cfg.update(attention_bias=draw(st.booleans()), mlp_bias=draw(st.booleans()))
    if model_type == "mistral":
        cfg.update(sliding_window=draw(st.sampled_from([None, 2, 3])))
    if model_type in ("qwen3", "gemma2", "gemma3_text", "minimax_m2"):
        cfg.update(head_dim=draw(st.sampled_from([4, 8])))
    if model_type == "phi3":
        cfg.update(partial_rotary_factor=draw(st.sampled_from([1.0, 0.5])))
        cfg.pop("rope_scaling", None)
    if model_type in ("gemma2", "gemma3_text"):
        cfg.update(sliding_window=draw(st.integers(2, 4)), query_pre_attn_scalar=draw(st.sampled_from([4, 8, 16])),
                   attention_bias=draw(st.booleans()), hidden_activation=draw(st.sampled_from(["gelu_pytorch_tanh", "gelu"])))
        cfg.pop("rope_scaling", None)
        if model_type == "gemma2":
            cfg.update(attn_logit_softcapping=draw(st.sampled_from([None, 5.0])),
                       final_logit_softcapping=draw(st.sampled_from([None, 3.0])))
        else:
            cfg.update(sliding_window_pattern=draw(st.integers(1, 3)), rope_local_base_freq=100.0)
    return cfg


@st.composite
def moe_like(draw, model_type):
    cfg = draw(llama_like("qwen3" if model_type in ("qwen3_moe", "minimax_m2") else "llama"))
    cfg.pop("attention_bias", None), cfg.pop("mlp_bias", None)
    E = draw(st.integers(2, 6))
    k = draw(st.integers(1, min(3, E)))
    if model_type == "mixtral":
        cfg.update(num_local_experts=E, num_experts_per_tok=k)
    elif model_type in ("qwen2_moe", "qwen3_moe"):
        cfg.update(num_experts=E, num_experts_per_tok=k, moe_intermediate_size=draw(st.integers(2, 8)),
                   norm_topk_prob=draw(st.booleans()), decoder_sparse_step=draw(st.integers(1, 2)))
        if model_type == "qwen2_moe":
            cfg.update(shared_expert_intermediate_size=draw(st.integers(2, 8)))
    elif model_type == "olmoe":
        cfg.update(num_experts=E, num_experts_per_tok=k, norm_topk_prob=draw(st.booleans()),
                   clip_qkv=draw(st.sampled_from([None, 0.5])))
        cfg["num_key_value_heads"] = cfg["num_attention_heads"] // draw(st.sampled_from([1, cfg["num_attention_heads"]]))
    elif model_type == "granitemoe":
        cfg.update(num_local_experts=E, num_experts_per_tok=k, embedding_multiplier=draw(st.sampled_from([1.0, 3.0])),
                   attention_multiplier=draw(st.sampled_from([0.2, 1.0])), residual_multiplier=0.5, logits_scaling=2.0)
    elif model_type == "minimax_m2":
        cfg.update(num_local_experts=E, num_experts_per_tok=k, rotary_dim=draw(st.sampled_from([2, 4])))
    elif model_type == "glm4_moe":
        G = draw(st.sampled_from([1, 2]))
        E = G * draw(st.integers(2, 3))
        cfg.update(n_routed_experts=E, num_experts_per_tok=draw(st.integers(1, min(2, E // G * 1))),
                   moe_intermediate_size=draw(st.integers(2, 8)), first_k_dense_replace=draw(st.integers(0, 1)),
                   use_qk_norm=draw(st.booleans()), attention_bias=draw(st.booleans()), n_group=G, topk_group=1,
                   n_shared_experts=draw(st.integers(0, 1)), routed_scaling_factor=draw(st.sampled_from([1.0, 2.5])),
                   norm_topk_prob=draw(st.booleans()), partial_rotary_factor=draw(st.sampled_from([0.5, 1.0])))
    return cfg


@st.composite
def deepseek(draw, model_type):
    H = draw(st.integers(1, 3))
    rope = draw(st.sampled_from([2, 4]))
    G = draw(st.sampled_from([1, 2]))
    E = G * draw(st.integers(2, 3))
    cfg = dict(vocab_size=V, hidden_size=8 * H, num_hidden_layers=2, num_attention_heads=H, num_key_value_heads=H,
               intermediate_size=draw(st.integers(4, 12)), moe_intermediate_size=draw(st.integers(2, 8)),
               n_routed_experts=E, num_experts_per_tok=draw(st.integers(1, 2)), first_k_dense_replace=1,
               kv_lora_rank=draw(st.integers(2, 8)), q_lora_rank=draw(st.sampled_from([None, 4])),
               qk_rope_head_dim=rope, qk_nope_head_dim=draw(st.sampled_from([4, 8])), v_head_dim=draw(st.sampled_from([2, 4])),
               n_shared_experts=draw(st.integers(0, 2)), tie_word_embeddings=draw(st.booleans()), pad_token_id=0,
               attention_bias=draw(st.booleans()))
    if model_type == "deepseek_v3":
        cfg.update(n_group=G, topk_group=1, routed_scaling_factor=draw(st.sampled_from([1.0, 2.5])),
                   norm_topk_prob=draw(st.booleans()))
        if draw(st.booleans()):
            cfg.update(rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8,
                                     "mscale": 1.0, "mscale_all_dim": draw(st.sampled_from([0.0, 1.0])),
                                     "beta_fast": 32, "beta_slow": 1}, max_position_embeddings=32)
    return cfg


@st.composite
def gpt_oss(draw):
    H, K = draw(heads())
    E = draw(st.integers(2, 5))
    return dict(vocab_size=V, hidden_size=8 * H, num_hidden_layers=2, num_attention_heads=H, num_key_value_heads=K,
                head_dim=draw(st.sampled_from([4, 8])), intermediate_size=draw(st.integers(2, 8)), num_local_experts=E,
                num_experts_per_tok=draw(st.integers(1, min(2, E))), sliding_window=draw(st.integers(1, 4)),
                tie_word_embeddings=draw(st.booleans()), pad_token_id=0)


@st.composite
def gpt2(draw):
    H = draw(st.integers(1, 3))
    return dict(vocab_size=V, n_embd=4 * H, n_layer=draw(st.integers(1, 2)), n_head=H, n_positions=16,
                n_inner=draw(st.sampled_from([None, 12])),
                activation_function=draw(st.sampled_from(["gelu_new", "relu", "gelu"])))


GENERATORS = {
    "llama": llama_like("llama"), "mistral": llama_like("mistral"), "qwen2": llama_like("qwen2"),
    "qwen3": llama_like("qwen3"), "phi3": llama_like("phi3"), "gemma2": llama_like("gemma2"),
    "gemma3_text": llama_like("gemma3_text"),
    "mixtral": moe_like("mixtral"), "qwen2_moe": moe_like("qwen2_moe"), "qwen3_moe": moe_like("qwen3_moe"),
    "olmoe": moe_like("olmoe"), "granitemoe": moe_like("granitemoe"), "minimax_m2": moe_like("minimax_m2"),
    "glm4_moe": moe_like("glm4_moe"),
    "deepseek_v2": deepseek("deepseek_v2"), "deepseek_v3": deepseek("deepseek_v3"),
    "gpt_oss": gpt_oss(), "gpt2": gpt2(),
}


def test_every_loadable_family_has_a_generator():
    assert set(GENERATORS) | {"kimi_k2"} == set(FAMILIES)


def _hf(model_type, cfg):
    """transformers' model of ``cfg``, its experts run by its eager loop (its grouped_mm path needs sizes
    aligned to 16 bytes on CPU, which small drawn sizes are not; both compute the same function). A config
    transformers itself cannot build or run is no example (``assume``): there is nothing to compare with."""
    config = CONFIG_MAPPING[model_type](**cfg)
    try:
        model = AutoModelForCausalLM.from_config(config, experts_implementation="eager").eval()
        with torch.no_grad():
            model(torch.zeros(1, 2, dtype=torch.long))
    except (TypeError, RuntimeError, ValueError, ZeroDivisionError):
        assume(False)
    return model


def _pair(model_type, cfg, seed):
    torch.manual_seed(seed)
    hf = _hf(model_type, cfg)
    with torch.no_grad():  # weights far from initialisation, so that every part matters
        for p in hf.parameters():
            p.normal_(0, 0.3)
        for name, b in hf.named_buffers():
            if "e_score_correction_bias" in name:
                b.normal_(0, 0.1)
    return hf, from_transformers(hf, moe_strategy="loop")


def _no_near_ties(model, ids, positions=None):
    """Whether every token's routing has a clear winner: k-th best minus the next, above 1e-5."""
    margins = []

    def hook(layer, inputs, output):
        x = inputs[0].reshape(-1, inputs[0].shape[-1])
        m = layer.m
        logits = layer.router(x)
        scores = torch.sigmoid(logits) if m.router in ("sigmoid_topk", "topk_sigmoid") else logits.softmax(-1)
        if layer.score_bias is not None:
            scores = scores + layer.score_bias
        if m.top_k < m.experts:
            top = scores.topk(m.top_k + 1, dim=-1).values
            margins.append(float((top[:, -2] - top[:, -1]).min()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, MoELayer)]
    with torch.no_grad():
        model(ids, positions=positions)
    for h in handles:
        h.remove()
    return all(m > 1e-5 for m in margins)


def _close(got, want):
    return float((got - want).abs().max()) <= 1e-4 * float(want.abs().max())


@pytest.mark.parametrize("model_type", sorted(GENERATORS))
def test_same_weights_same_logits(model_type):
    @SETTINGS
    @given(cfg=GENERATORS[model_type], seed=st.integers(0, 3), T=st.integers(1, 6))
    def run(cfg, seed, T):
        hf, ours = _pair(model_type, cfg, seed)
        ids = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(seed))
        assume(_no_near_ties(ours, ids))
        with torch.no_grad():
            assert _close(ours(ids), hf(ids).logits)
            # a padding-free batch: two sequences in one row give what each gives alone
            if T > 1:
                cut = T // 2
                packed = torch.cat([ids[:1, :cut], ids[1:, :T - cut]], dim=1)
                positions = torch.cat([torch.arange(cut), torch.arange(T - cut)])[None]
                assume(_no_near_ties(ours, packed, positions))
                alone = torch.cat([hf(packed[:, :cut]).logits, hf(packed[:, cut:]).logits], dim=1)
                assert _close(ours(packed, positions=positions), alone)

    run()


@pytest.mark.parametrize("model_type", sorted(GENERATORS))
def test_transformers_runs_the_flops_count_reports(model_type):
    """torch's FLOP counter (with the formulas it lacks on CPU) on transformers' own model equals count()."""
    @settings(max_examples=3, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(cfg=GENERATORS[model_type], T=st.integers(1, 6))
    def run(cfg, T):
        hf = _hf(model_type, cfg)
        ids = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(T))
        spec = load(hf.config.to_dict())
        assert count_flops(lambda i: hf(i).logits, ids) == count(spec, seq_len=T).flops_per_token * 2 * T

    run()
