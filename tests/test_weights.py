"""The built models are the real ones: transformers' model of a config, its weights loaded into
``whatruns.build`` of the same config, gives the same logits, and transformers' own model runs the FLOPs
``count()`` reports (a second, independent oracle for the counts: torch's counter on the reference
implementation) -- for every model type whatruns reads, and every wrapper's text model.

Where transformers computes differently, the difference is asserted exactly, by a formula
(:func:`_extra_flops`): Llama 4 runs every expert on every token; the recurrent layers (gated DeltaNet,
Mamba-2) run chunked algorithms, and their convolutions pad both ends; the Switch Transformer skips the
expert work of the tokens its router drops. whatruns' recurrent layers run the recurrence token by token
(per-token products with the state), which are count()'s FLOPs.

Tolerance: logits agree to 1e-4 of the largest logit (float32; what is seen is ~2e-7, gemm rounding).
Routing can tie: two experts with scores within float rounding of each other may be picked in either order
by the two implementations, and then the outputs differ by more than rounding. A drawn example whose
routing is that close (a margin below 1e-5 between the k-th and the next expert's score -- sparsemixer's
threshold, a sparse-attention indexer's k-th key too -- measured on the whatruns model) is discarded
(hypothesis ``assume``) rather than the tolerance loosened.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from transformers import CONFIG_MAPPING, AutoModelForCausalLM

from whatruns import count, load
from whatruns.hf import WRAPPERS
from whatruns.measure import count_flops
from whatruns.nn import MoELayer
from whatruns.spec import LinearAttention, Mamba2, MoE
from whatruns.weights import FAMILIES, WRAPPED, from_transformers

transformers.logging.set_verbosity_error()
torch.set_num_threads(1)

V = 40  # vocabulary of every drawn config; the inputs are its first V - 3 tokens (the last ones, a wrapper's image
# and video tokens, a wrapper replaces)
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
    elif model_type == "phimoe":
        cfg.pop("rope_scaling", None)  # longrope or none: its forward runs no other rope type
        if draw(st.booleans()):  # (an original context beyond T: the long mscale would need longer sequences)
            half = cfg["hidden_size"] // cfg["num_attention_heads"] // 2
            cfg.update(max_position_embeddings=32, rope_scaling=dict(
                rope_type="longrope", original_max_position_embeddings=8, short_mscale=1.25, long_mscale=1.5,
                short_factor=[1.0 + 0.5 * i for i in range(half)], long_factor=[2.0 + i for i in range(half)]))
        cfg.update(num_local_experts=max(E, 2), attention_bias=draw(st.booleans()), lm_head_bias=draw(st.booleans()),
                   router_jitter_noise=draw(st.sampled_from([0.01, 0.2])), rms_norm_eps=1e-5)
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
    if model_type in ("deepseek_v3", "deepseek_v32", "glm_moe_dsa"):
        cfg.update(n_group=G, topk_group=1, routed_scaling_factor=draw(st.sampled_from([1.0, 2.5])),
                   norm_topk_prob=draw(st.booleans()))
    if model_type in ("deepseek_v32", "glm_moe_dsa"):  # sparse attention: an indexer picks top-k keys per query
        L = draw(st.integers(2, 3))
        cfg.update(q_lora_rank=4, num_hidden_layers=L, index_n_heads=draw(st.integers(1, 2)),
                   index_head_dim=draw(st.sampled_from([4, 6])), index_topk=draw(st.integers(1, 3)),
                   rope_theta=draw(st.sampled_from([100.0, 10000.0])))
        if model_type == "glm_moe_dsa":
            cfg["indexer_types"] = ["full"] + draw(st.lists(st.sampled_from(["full", "shared"]), min_size=L - 1,
                                                            max_size=L - 1))
    if model_type in ("deepseek_v3", "deepseek_v32"):
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
def llama4(draw):
    H, K = draw(heads())
    L = draw(st.integers(2, 4))
    E = draw(st.integers(2, 4))
    cfg = dict(vocab_size=V, hidden_size=4 * H, num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=K,
               head_dim=draw(st.sampled_from([4, 8])), intermediate_size=draw(st.integers(2, 6)),
               intermediate_size_mlp=draw(st.integers(2, 8)), num_local_experts=E,
               num_experts_per_tok=draw(st.integers(1, 2)), interleave_moe_layer_step=draw(st.integers(1, 2)),
               no_rope_layers=draw(st.lists(st.integers(0, 1), min_size=L, max_size=L)),
               attention_chunk_size=draw(st.sampled_from([2, 3, 8192])), use_qk_norm=draw(st.booleans()),
               attn_temperature_tuning=draw(st.booleans()), floor_scale=draw(st.sampled_from([1, 2])),
               attn_scale=draw(st.sampled_from([0.1, 0.5])), rms_norm_eps=draw(st.sampled_from([1e-5, 1e-6])),
               tie_word_embeddings=draw(st.booleans()), pad_token_id=0,
               rope_theta=draw(st.sampled_from([100.0, 500000.0])))
    cfg.update(draw(rope_scaling()))
    return cfg


@st.composite
def dbrx(draw):
    H, K = draw(heads())
    E = draw(st.integers(2, 5))
    cfg = dict(vocab_size=V, d_model=4 * H, n_heads=H, n_layers=draw(st.integers(1, 2)), pad_token_id=0,
               attn_config=dict(kv_n_heads=K, clip_qkv=draw(st.sampled_from([None, 0.5])), rope_theta=500000.0),
               ffn_config=dict(ffn_hidden_size=draw(st.integers(2, 8)), moe_num_experts=E,
                               moe_top_k=draw(st.integers(1, min(2, E))),
                               moe_normalize_expert_weights=draw(st.sampled_from([1.0, None]))))
    if draw(st.booleans()):
        cfg["rope_theta"] = 100.0  # what transformers' rotary reads (attn_config's rope_theta it ignores)
    return cfg


@st.composite
def t5(draw, model_type="t5"):
    H = draw(st.integers(1, 2))
    enc, dec = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    buckets = draw(st.sampled_from([4, 8, 32]))
    cfg = dict(vocab_size=V, d_model=4 * H, d_kv=draw(st.sampled_from([2, 4])), d_ff=draw(st.integers(2, 8)),
               num_layers=enc, num_decoder_layers=dec, num_heads=H, pad_token_id=0, decoder_start_token_id=0,
               relative_attention_num_buckets=buckets,
               # beyond the decoder's exact range (half its buckets): transformers divides by log(distance / range)
               relative_attention_max_distance=draw(st.sampled_from([buckets // 2 + 2, 128])),
               layer_norm_epsilon=draw(st.sampled_from([1e-6, 1e-3])))
    if model_type == "t5":
        cfg.update(feed_forward_proj=draw(st.sampled_from(["relu", "gated-gelu", "gated-silu"])),
                   tie_word_embeddings=draw(st.booleans()))  # false: no output scaling (v1.1, Flan)
    else:
        cfg.update(num_experts=draw(st.integers(2, 4)), expert_capacity=draw(st.sampled_from([1, 2, 64])),
                   num_sparse_encoder_layers=draw(st.integers(0, enc)), num_sparse_decoder_layers=draw(st.integers(0, dec)),
                   router_bias=draw(st.booleans()), dense_act_fn=draw(st.sampled_from(["relu", "gelu_new"])))
    return cfg


@st.composite
def bert(draw):
    H = draw(st.integers(1, 3))
    return dict(vocab_size=V, hidden_size=4 * H, num_hidden_layers=draw(st.integers(1, 2)), num_attention_heads=H,
                intermediate_size=draw(st.integers(2, 12)), max_position_embeddings=16,
                type_vocab_size=draw(st.integers(1, 2)), layer_norm_eps=draw(st.sampled_from([1e-12, 1e-3])),
                hidden_act=draw(st.sampled_from(["gelu", "relu", "gelu_new"])), pad_token_id=0)


@st.composite
def mimo(draw):
    K = draw(st.integers(1, 2))
    H = 2 * K * draw(st.integers(1, 2))  # the sliding layers have 2K key/value heads
    L = draw(st.integers(2, 3))
    E = draw(st.sampled_from([2, 4]))
    cfg = dict(vocab_size=V, hidden_size=8 * K, num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=K,
               head_dim=draw(st.sampled_from([6, 12])), v_head_dim=draw(st.sampled_from([2, 4])),
               intermediate_size=draw(st.integers(2, 8)), moe_intermediate_size=draw(st.integers(2, 6)),
               n_routed_experts=E, num_experts_per_tok=draw(st.integers(1, 2)), n_group=draw(st.sampled_from([1, 2])),
               topk_group=1, norm_topk_prob=draw(st.booleans()), routed_scaling_factor=draw(st.sampled_from([None, 2.0])),
               sliding_window=draw(st.integers(1, 4)), attention_bias=draw(st.booleans()),
               attention_value_scale=draw(st.sampled_from([None, 0.707])), pad_token_id=0,
               layer_types=draw(st.lists(st.sampled_from(["full_attention", "sliding_attention"]), min_size=L, max_size=L)),
               mlp_layer_types=["dense"] + draw(st.lists(st.sampled_from(["dense", "sparse"]), min_size=L - 1,
                                                          max_size=L - 1)),
               tie_word_embeddings=draw(st.booleans()))
    if draw(st.booleans()):
        cfg["rope_parameters"] = {"full_attention": {"rope_type": "default", "rope_theta": 100.0},
                                  "sliding_attention": {"rope_type": "default", "rope_theta": 1000.0,
                                                        "partial_rotary_factor": 1.0}}
    return cfg


@st.composite
def step3p7(draw):
    """Step 3.5 / 3.7's text model (``step3p5``), inside the ``step3p7`` wrapper transformers builds it in (a
    one-layer vision tower of width 8 beside it, unused by text)."""
    K = draw(st.integers(1, 2))
    H = K * draw(st.integers(1, 2))
    L = draw(st.integers(2, 3))
    E = draw(st.integers(2, 4))
    types = draw(st.lists(st.sampled_from(["full_attention", "sliding_attention"]), min_size=L, max_size=L))
    text = dict(vocab_size=V, hidden_size=8, num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=K,
                head_dim=draw(st.sampled_from([4, 8])), intermediate_size=draw(st.integers(2, 8)),
                moe_intermediate_size=draw(st.integers(2, 6)), n_routed_experts=E,
                num_experts_per_tok=draw(st.integers(1, 2)), share_expert_dim=draw(st.integers(2, 6)),
                mlp_layer_types=["dense"] + draw(st.lists(st.sampled_from(["dense", "sparse"]), min_size=L - 1,
                                                           max_size=L - 1)),
                layer_types=types, sliding_window=draw(st.integers(1, 3)), pad_token_id=0,
                num_sliding_attention_heads=draw(st.sampled_from([None, 2 * H])),
                attention_bias=draw(st.booleans()), mlp_bias=draw(st.booleans()),
                query_pre_attn_scalar=draw(st.sampled_from([None, 16])),
                moe_router_scaling_factor=draw(st.sampled_from([1.0, 3.0])),
                rope_theta=draw(st.sampled_from([100.0, [100.0 * (i + 1) for i in range(L)]])),
                partial_rotary_factors=draw(st.sampled_from([None, [0.5 if t == "full_attention" else 1.0
                                                                    for t in types]])),
                swiglu_limits=draw(st.sampled_from([None, [0.0] + [0.5] * (L - 1)])),
                swiglu_limits_shared=draw(st.sampled_from([None, [0.5] * L])), rms_norm_eps=1e-5)
    text = {k: v for k, v in text.items() if v is not None}
    return dict(text_config=text, tie_word_embeddings=draw(st.booleans()), image_token_id=V - 1,
                vision_config=dict(hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
                                   image_size=28, patch_size=14, max_position_embeddings=4))


@st.composite
def qwen3_vl_moe(draw):
    """Qwen3-VL-MoE's text model (``qwen3_vl_moe_text``), inside the wrapper that holds its LM head (a one-layer
    vision tower of width 8 beside it, unused by text)."""
    cfg = draw(moe_like("qwen3_moe"))
    cfg.pop("norm_topk_prob"), cfg.pop("tie_word_embeddings")
    cfg.update(attention_bias=draw(st.booleans()), mlp_only_layers=draw(st.sampled_from([[], [0]])))
    if "rope_scaling" in cfg:
        cfg["rope_parameters"] = {**cfg.pop("rope_scaling"), "rope_theta": cfg.pop("rope_theta")}
    return dict(text_config=cfg, tie_word_embeddings=draw(st.booleans()), image_token_id=V - 1, video_token_id=V - 2,
                vision_config=dict(depth=1, hidden_size=8, intermediate_size=8, num_heads=2,
                                   out_hidden_size=cfg["hidden_size"], deepstack_visual_indexes=[]))


@st.composite
def qwen_hybrid(draw, model_type):
    """Qwen3-Next and Qwen3.5: gated DeltaNet layers and gated full attention, by layer_types."""
    K = draw(st.integers(1, 2))
    H = K * draw(st.integers(1, 2))
    Hk = draw(st.integers(1, 2))
    L = draw(st.integers(2, 3))
    cfg = dict(vocab_size=V, hidden_size=8, num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=K,
               head_dim=draw(st.sampled_from([8, 16])), intermediate_size=draw(st.integers(2, 8)),
               linear_num_key_heads=Hk, linear_num_value_heads=Hk * draw(st.integers(1, 2)),
               linear_key_head_dim=draw(st.sampled_from([2, 4])), linear_value_head_dim=draw(st.sampled_from([2, 4])),
               linear_conv_kernel_dim=draw(st.integers(2, 4)), attention_bias=draw(st.booleans()),
               layer_types=draw(st.lists(st.sampled_from(["linear_attention", "full_attention"]), min_size=L,
                                         max_size=L)),
               rms_norm_eps=draw(st.sampled_from([1e-6, 1e-3])), rope_theta=draw(st.sampled_from([100.0, 10000.0])),
               tie_word_embeddings=draw(st.booleans()), pad_token_id=0)
    if model_type != "qwen3_5_text":
        E = draw(st.integers(2, 4))
        cfg.update(num_experts=E, num_experts_per_tok=draw(st.integers(1, 2)), moe_intermediate_size=draw(st.integers(2, 6)),
                   shared_expert_intermediate_size=draw(st.integers(2, 6)))
    if model_type == "qwen3_next":
        cfg.update(norm_topk_prob=draw(st.booleans()), decoder_sparse_step=draw(st.integers(1, 2)),
                   mlp_only_layers=draw(st.sampled_from([[], [0]])))
    return cfg


@st.composite
def nemotron_h(draw):
    L = draw(st.integers(2, 4))
    types = draw(st.lists(st.sampled_from(["linear_attention", "moe", "full_attention", "mlp"]), min_size=L, max_size=L))
    G = draw(st.sampled_from([1, 2]))
    Hm = G * draw(st.integers(1, 2))
    K = draw(st.integers(1, 2))
    # head_dim and state of 2 or more: torch's einsum turns a contraction over one element into an elementwise
    # product, which no FLOP counter counts, so transformers' chunked scan would count less than its formula
    return dict(vocab_size=V, hidden_size=8, layers_block_type=types, num_attention_heads=K * draw(st.integers(1, 2)),
                num_key_value_heads=K, head_dim=draw(st.sampled_from([2, 4])), intermediate_size=draw(st.integers(2, 8)),
                mamba_num_heads=Hm, mamba_head_dim=draw(st.integers(2, 3)), ssm_state_size=draw(st.integers(2, 4)),
                n_groups=G, conv_kernel=draw(st.integers(2, 4)), use_conv_bias=draw(st.booleans()),
                chunk_size=draw(st.sampled_from([2, 4, 128])), time_step_min=draw(st.sampled_from([0.001, 1.0])),
                n_routed_experts=4, num_experts_per_tok=draw(st.integers(1, 2)), moe_intermediate_size=draw(st.integers(2, 6)),
                moe_shared_expert_intermediate_size=draw(st.integers(2, 6)),
                moe_latent_size=draw(st.sampled_from([None, 4])), mlp_bias=draw(st.booleans()),
                n_group=draw(st.sampled_from([1, 2])), topk_group=1, norm_topk_prob=draw(st.booleans()),
                routed_scaling_factor=draw(st.sampled_from([1.0, 2.5])),
                layer_norm_epsilon=draw(st.sampled_from([1e-5, 1e-3])), pad_token_id=0)


@st.composite
def gemma4(draw):
    L = draw(st.integers(2, 4))
    K = draw(st.integers(1, 2))
    H = K * draw(st.integers(1, 2))
    types = draw(st.lists(st.sampled_from(["sliding_attention", "full_attention"]), min_size=L, max_size=L))
    moe = draw(st.booleans())
    P = draw(st.sampled_from([0, 2]))
    cfg = dict(vocab_size=V, hidden_size=8, num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=K,
               head_dim=draw(st.sampled_from([4, 8])), global_head_dim=draw(st.sampled_from([8, 16])),
               intermediate_size=draw(st.integers(2, 8)), layer_types=types, sliding_window=draw(st.integers(1, 3)),
               num_kv_shared_layers=draw(st.integers(0, 1)), use_double_wide_mlp=draw(st.booleans()),
               attention_k_eq_v=draw(st.booleans()), num_global_key_value_heads=draw(st.sampled_from([None, 1])),
               hidden_size_per_layer_input=P, vocab_size_per_layer_input=V + 3, attention_bias=draw(st.booleans()),
               final_logit_softcapping=draw(st.sampled_from([None, 3.0])), rms_norm_eps=draw(st.sampled_from([1e-6, 1e-3])),
               hidden_activation=draw(st.sampled_from(["gelu_pytorch_tanh", "silu"])),
               tie_word_embeddings=draw(st.booleans()), pad_token_id=0, enable_moe_block=moe)
    if moe:
        E = draw(st.integers(2, 4))
        cfg.update(num_experts=E, top_k_experts=draw(st.integers(1, 2)), moe_intermediate_size=draw(st.integers(2, 6)))
    if draw(st.booleans()):
        cfg["rope_parameters"] = {"sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                                  "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.5,
                                                     "rope_theta": 1000.0}}
    return {k: v for k, v in cfg.items() if v is not None}


VISION = {  # the smallest vision tower each wrapper builds (text alone never runs it)
    "llama4": dict(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8, image_size=28,
                   patch_size=14, projector_input_dim=8, projector_output_dim=8, vision_output_dim=8),
    "kimi_k25": dict(num_attention_heads=2, num_hidden_layers=1, hidden_size=8, intermediate_size=8),
    "qwen3_5": dict(depth=1, hidden_size=8, intermediate_size=8, num_heads=2, out_hidden_size=8),
    "gemma4": dict(hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2, head_dim=4),
    "gemma3": dict(hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                   patch_size=14),
}
VISION["qwen3_5_moe"] = VISION["qwen3_5"]


@st.composite
def wrapped(draw, wrapper, text):
    """A wrapper (multimodal) config around a drawn text config: its text model is what is compared. Where the
    wrapper's class holds the LM head, the tie flag is the wrapper's."""
    inner = dict(draw(text))
    cfg = dict(text_config=inner, vision_config=VISION[wrapper])
    if wrapper in ("kimi_k25", "gemma4", "gemma3"):
        cfg["tie_word_embeddings"] = inner.pop("tie_word_embeddings", draw(st.booleans()))
    if wrapper == "kimi_k25":
        inner["model_type"] = "deepseek_v3"
        cfg.update(projection_hidden_size=8, media_placeholder_token_id=V - 1)
    elif wrapper == "llama4":
        cfg["image_token_index"] = V - 1
    elif wrapper == "gemma3":
        inner["final_logit_softcapping"] = draw(st.sampled_from([None, 3.0]))  # its wrapper applies none
        cfg.update(mm_tokens_per_image=4, image_token_index=V - 1)
    elif wrapper == "gemma4":
        cfg.update(image_token_id=V - 1, audio_config=None)
    else:
        cfg.update(image_token_id=V - 1, video_token_id=V - 2)
    return cfg


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
    "glm4_moe": moe_like("glm4_moe"), "phimoe": moe_like("phimoe"),
    "deepseek_v2": deepseek("deepseek_v2"), "deepseek_v3": deepseek("deepseek_v3"),
    "deepseek_v32": deepseek("deepseek_v32"), "glm_moe_dsa": deepseek("glm_moe_dsa"),
    "gpt_oss": gpt_oss(), "gpt2": gpt2(), "dbrx": dbrx(), "llama4_text": llama4(),
    "t5": t5(), "switch_transformers": t5("switch_transformers"), "bert": bert(),
    "mimo_v2_flash": mimo(), "qwen3_next": qwen_hybrid("qwen3_next"), "qwen3_5_text": qwen_hybrid("qwen3_5_text"),
    "qwen3_5_moe_text": qwen_hybrid("qwen3_5_moe_text"), "nemotron_h": nemotron_h(),
    "gemma4_text": gemma4(),
    "llama4": wrapped("llama4", llama4()), "kimi_k25": wrapped("kimi_k25", deepseek("deepseek_v3")),
    "qwen3_5": wrapped("qwen3_5", qwen_hybrid("qwen3_5_text")),
    "qwen3_5_moe": wrapped("qwen3_5_moe", qwen_hybrid("qwen3_5_moe_text")), "gemma4": wrapped("gemma4", gemma4()),
    "gemma3": wrapped("gemma3", llama_like("gemma3_text")), "step3p7": step3p7(), "qwen3_vl_moe": qwen3_vl_moe(),
}


def test_every_loadable_family_has_a_generator():
    """Every family whose weights whatruns maps is drawn: on its own, or inside the wrapper transformers builds
    it in (its text model has no class with an LM head of its own)."""
    inside = {"step3p5", "qwen3_vl_moe_text"}  # text models transformers builds only inside their wrapper
    assert set(GENERATORS) | {"kimi_k2"} == (set(FAMILIES) - inside) | set(WRAPPED)
    assert set(WRAPPED) == set(WRAPPERS)  # every wrapper whatruns reads, its text model compared


# the class that holds the LM head, where AutoModelForCausalLM has none (or another one) for the model type
HF_CLASS = {"t5": "T5ForConditionalGeneration", "switch_transformers": "SwitchTransformersForConditionalGeneration",
            "bert": "BertForMaskedLM", "step3p7": "Step3p7ForConditionalGeneration",
            "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration", "kimi_k25": "Kimi_K25ForConditionalGeneration"}
# (the other wrappers: AutoModelForCausalLM's class for them -- Llama 4's and Qwen3.5's text model alone, its tie
# flag the text config's, as whatruns reads them; Gemma 3's and 4's ForConditionalGeneration, the wrapper's flag)
ENCODER_DECODER = ("t5", "switch_transformers")


def _hf(model_type, cfg):
    """transformers' model of ``cfg``, its experts run by its eager loop (its grouped_mm path needs sizes
    aligned to 16 bytes on CPU, which small drawn sizes are not; both compute the same function). A config
    transformers itself cannot build or run is no example (``assume``): there is nothing to compare with."""
    config = CONFIG_MAPPING[model_type](**cfg)
    try:
        if model_type in HF_CLASS:
            model = getattr(transformers, HF_CLASS[model_type])._from_config(config, experts_implementation="eager")
            model.eval()
        else:
            model = AutoModelForCausalLM.from_config(config, experts_implementation="eager").eval()
        # inference only: and torch's module tracker (in its FLOP counter) fails on a module handed views of
        # parameters that require grad (DBRX's experts)
        model.requires_grad_(False)
        with torch.no_grad():
            _logits(model, torch.zeros(1, 2, dtype=torch.long))
    except (TypeError, RuntimeError, ValueError, ZeroDivisionError):
        assume(False)
    return model


def _logits(hf, ids):
    """transformers' logits for token ids, one forward pass without a cache (what whatruns' forward is; and
    transformers cannot open a cache for a model of recurrent layers alone); an encoder-decoder reads the ids in
    both stacks, as whatruns' does."""
    if hf.config.model_type in ENCODER_DECODER:
        return hf(input_ids=ids, decoder_input_ids=ids, use_cache=False).logits
    if hf.config.model_type == "bert":
        return hf(ids).logits
    return hf(ids, use_cache=False).logits


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


def _margins(layer, x):
    """How far each token's routing is from a tie: the smallest gap between a chosen expert's score and an
    unchosen one's -- and, for sparsemixer, between a logit's relative distance and the threshold 2*eps."""
    m = layer.m
    if m.router_scale:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + layer.eps) * layer.router_input_scale * x.shape[-1] ** -0.5
    logits = layer.router(x)
    if m.router == "sparsemixer":
        top = logits.topk(min(3, m.experts), dim=-1).values
        out = [top[:, :-1] - top[:, 1:]]
        for best in (top[:, :1], top[:, 1:2]):
            rel = (best - logits) / logits.abs().clamp(min=best)
            out.append((rel - 2 * m.router_eps).abs())
        return min(float(o.min()) for o in out)
    if m.router == "topk_sigmoid":
        scores = logits
    else:
        scores = torch.sigmoid(logits) if m.router == "sigmoid_topk" else logits.softmax(-1)
    if layer.score_bias is not None:
        scores = scores + layer.score_bias
    if m.top_k >= m.experts:
        return float("inf")
    top = scores.topk(m.top_k + 1, dim=-1).values
    return float((top[:, -2] - top[:, -1]).min())


def _no_near_ties(model, ids, positions=None):
    """Whether every token's routing has a clear winner: a margin above 1e-5 (:func:`_margins`), and every sparse-
    attention indexer's choice of keys too."""
    margins = []

    def hook(layer, args, kwargs, output):
        x = kwargs.get("route_from")
        x = (args[0] if x is None else x).reshape(-1, args[0].shape[-1])
        margins.append(_margins(layer, x))

    def indexer_hook(indexer, args, kwargs, output):
        # the keys an indexer keeps: its top_k scores, a gap to the next visible key's (ReLU makes exact ties)
        scores = indexer.scores(args[0], args[1], kwargs.get("positions"))
        mask, causal = args[2], args[3]
        T, S = scores.shape[-2:]
        if mask is None:  # a decoder's plain causal attention
            base = torch.ones(T, S, dtype=torch.bool).tril() if causal else torch.ones(T, S, dtype=torch.bool)
        else:
            base = (mask if mask.dim() == 2 else mask[:, 0]) == 0
        base = base.expand_as(scores)
        k = indexer.i.top_k
        seen = scores.masked_fill(~base, float("-inf")).sort(dim=-1, descending=True).values
        many = base.sum(-1) > k  # rows with more visible keys than picks
        if many.any():
            margins.append(float((seen[..., k - 1] - seen[..., k])[many].min()))

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in model.modules() if isinstance(m, MoELayer)]
    handles += [m.register_forward_hook(indexer_hook, with_kwargs=True) for m in model.modules()
                if type(m).__name__ == "Indexer"]
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
        ids = torch.randint(0, V - 3, (2, T), generator=torch.Generator().manual_seed(seed))
        assume(_no_near_ties(ours, ids))
        compared.append(T)
        with torch.no_grad():
            assert _close(ours(ids), _logits(hf, ids))
            # a padding-free batch: two sequences in one row give what each gives alone
            if T > 1:
                cut = T // 2
                packed = torch.cat([ids[:1, :cut], ids[1:, :T - cut]], dim=1)
                positions = torch.cat([torch.arange(cut), torch.arange(T - cut)])[None]
                assume(_no_near_ties(ours, packed, positions))
                alone = torch.cat([_logits(hf, packed[:, :cut]), _logits(hf, packed[:, cut:])], dim=1)
                assert _close(ours(packed, positions=positions), alone)

    compared = []
    run()
    assert len(compared) >= 3, f"only {len(compared)} drawn configs were compared"  # the rest transformers refused


def _conv_extra(m, B, T) -> int:
    """A recurrent layer's causal convolution in transformers is padded K - 1 on both ends, the first T of its
    T + K - 1 outputs kept: 2K FLOPs a channel and output, K - 1 outputs more than whatruns' T."""
    return 2 * B * m.conv_channels * m.conv * (m.conv - 1)


def _extra_flops(model_type, hf, spec, ids) -> int:
    """What transformers' own model computes beyond count()'s FLOPs, by the way it computes (0 for most)."""
    N, D = ids.numel(), spec.width
    B, T = ids.shape
    extra = 0
    if model_type == "switch_transformers":  # a token an expert has no room for (expert_capacity) skips it: the
        # expert's two matmuls, 2 * 2DF, not run for it -- as many as transformers' router drops
        kept = []
        hooks = [m.register_forward_hook(lambda mod, args, out: kept.append(int(out[0].sum())))
                 for m in hf.modules() if type(m).__name__ == "SwitchTransformersTop1Router"]
        with torch.no_grad():
            _logits(hf, ids)
        for h in hooks:
            h.remove()
        extra -= sum(N - k for k in kept) * 4 * D * spec.moe.expert.width
    for block in (r.block for r in spec.blocks for _ in range(r.repeat)):
        f, m = block.ffn, block.mixer
        if isinstance(m, LinearAttention):
            # transformers runs a sequence's gated delta rule in chunks of c = 64 (torch_chunk_gated_delta_rule, the
            # sequence padded to a whole chunk), per sequence and value head: two c x c products over dk (the UT
            # system and the in-chunk attention), one of c x c by dv, three of c by dk x dv; the two triangular
            # solves torch does not count. whatruns runs the recurrence: three dk x dv products a token.
            c, chunks = 64, -(-T // 64)
            dk, dv = m.key_dim, m.value_dim
            extra += B * m.heads * (chunks * (4 * c * c * dk + 2 * c * c * dv + 6 * c * dk * dv) - 6 * T * dk * dv)
        if isinstance(m, Mamba2):
            # transformers' Mamba-2 (mamba2_chunk_scan, the sequence padded to n = ceil(T / c) chunks of c =
            # chunk_size) contracts, per sequence and head: C with B in a chunk (c x c over N), those with x (c x c
            # over P), the chunk's state (c over P x N), the states across chunks ((n + 1)^2 over P x N), C with the
            # states (c over N x P). whatruns' recurrence: two P x N products a token.
            c = hf.config.chunk_size
            n, P, N = -(-T // c), m.head_dim, m.state
            extra += 2 * B * m.heads * (n * c * c * (N + P) + 2 * n * c * P * N + (n + 1) ** 2 * P * N - 2 * T * P * N)
        if isinstance(m, (LinearAttention, Mamba2)):
            extra += _conv_extra(m, B, T)
        if model_type in ("llama4_text", "llama4") and isinstance(f, MoE):
            # Llama 4's experts run on every token (the unchosen ones read it scaled by sigmoid(-inf) = 0): one
            # bmm of (E, N, D) by (E, D, 2F) and one of (E, N, F) by (E, F, D), where count() has k rows a token
            extra += 6 * (f.experts - f.top_k) * N * D * f.expert.width
    return extra


@pytest.mark.parametrize("model_type", sorted(GENERATORS))
def test_transformers_runs_the_flops_count_reports(model_type):
    """torch's FLOP counter (with the formulas it lacks on CPU) on transformers' own model equals count(), or
    count() plus what :func:`_extra_flops` explains."""
    @settings(max_examples=3, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(cfg=GENERATORS[model_type], T=st.integers(1, 6))
    def run(cfg, T):
        hf = _hf(model_type, cfg)
        ids = torch.randint(0, V - 3, (2, T), generator=torch.Generator().manual_seed(T))
        spec = load(hf.config.to_dict())
        expected = count(spec, seq_len=T).flops_per_token * 2 * T + _extra_flops(model_type, hf, spec, ids)
        assert count_flops(lambda i: _logits(hf, i), ids) == expected
        counted.append(T)

    counted = []
    run()
    assert len(counted) >= 2, f"only {len(counted)} drawn configs were counted"


def test_relative_buckets_are_t5s():
    """whatruns.nn.relative_buckets gives T5's _relative_position_bucket, offset by offset: both directions,
    bucket counts and maximum distances of every published T5 / Switch and small ones (the distance beyond
    the exact range, as transformers needs)."""
    from transformers.models.t5.modeling_t5 import T5Attention
    from whatruns.nn import relative_buckets

    offsets = torch.arange(-300, 301)[None, :]
    for buckets in (4, 6, 8, 16, 32, 64):
        for bidirectional in (True, False):
            exact = (buckets // 2 if bidirectional else buckets) // 2
            for max_distance in (exact + 1, exact + 3, 20, 128, 256):
                if max_distance <= exact:
                    continue
                want = T5Attention._relative_position_bucket(offsets, bidirectional, buckets, max_distance)
                got = relative_buckets(1, 601, buckets, bidirectional, max_distance, offsets=offsets)
                assert torch.equal(got, want), (buckets, bidirectional, max_distance)
