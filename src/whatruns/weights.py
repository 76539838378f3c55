"""Weights in, logits out: a ``transformers`` model's weights loaded into the whatruns model of the same config.

    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_config(config)      # or from_pretrained(...)
    model = whatruns.weights.from_transformers(hf)     # whatruns.build of the same config, hf's weights in it
    torch.testing.assert_close(model(ids), hf(ids).logits)

:func:`load_hf_state_dict` maps a state dict by name, family by family (:data:`FAMILIES`): the same tensors,
renamed, and fused ones split -- q/k/v (Phi-3, GPT-2, DBRX), gate/up (experts of every MoE, Phi-3; Llama 4's
side by side along the last dimension), the interleaved gate/up and the (in, out) orientation of gpt-oss's
experts, DBRX's experts stacked along the rows, GPT-2's Conv1D, Qwen3-Next's projections grouped by key head --
or several joined: Switch's per-expert matrices stacked, Qwen3.5's separate DeltaNet projections concatenated.
Where a name does not say what the layer is (Nemotron-H's ``mixer``, Gemma 4's dense FFN beside its experts),
the whatruns layer decides. A wrapper's (multimodal) state dict gives its text model's weights
(:data:`WRAPPED`). A tensor it does not place, or a parameter it leaves empty, is an error: nothing is loaded
silently wrong. It reads tensors only; it never runs code from a checkpoint.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, List, Tuple

import torch

from .spec import SpecError

Rule = Tuple[str, str, Callable]


def _same(t):
    return t


def _t(t):
    return t.transpose(-1, -2).contiguous()


def _half(i):
    return lambda t: t.chunk(2, dim=-2)[i].contiguous() if t.dim() == 3 else t.chunk(2, dim=0)[i].contiguous()


def _interleaved(i):  # gpt-oss: gate and up alternate along the output dimension, stored (E, in, 2F)
    return lambda t: (t[..., i::2].transpose(-1, -2) if t.dim() == 3 else t[..., i::2]).contiguous()


# Llama's names, and what most families share; "{i}" is a layer index
LLAMA: List[Rule] = [
    (r"model\.embed_tokens\.weight", "embed.weight", _same),
    (r"model\.norm\.(weight|bias)", r"decoder.norm.\1", _same),
    (r"lm_head\.weight", "head.weight", _same),
    (r"lm_head\.bias", "head_bias", _same),
    (r"model\.layers\.(\d+)\.input_layernorm\.(weight|bias)", r"decoder.blocks.\1.attn_norm.\2", _same),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.(weight|bias)", r"decoder.blocks.\1.ffn_norm.\2", _same),
    (r"model\.layers\.(\d+)\.self_attn\.(q|k|v|o)_proj\.(weight|bias)", r"decoder.blocks.\1.attn.\2.\3", _same),
    (r"model\.layers\.(\d+)\.self_attn\.(q|k)_norm\.weight", r"decoder.blocks.\1.attn.\2_head_norm.weight", _same),
    (r"model\.layers\.(\d+)\.self_attn\.sinks", r"decoder.blocks.\1.attn.sinks", _same),
    (r"model\.layers\.(\d+)\.self_attn\.g_proj\.weight", r"decoder.blocks.\1.attn.g.weight", _same),  # per-head gate
    # MLA
    (r"model\.layers\.(\d+)\.self_attn\.q_a_proj\.(weight|bias)", r"decoder.blocks.\1.attn.q_a.\2", _same),
    (r"model\.layers\.(\d+)\.self_attn\.q_a_layernorm\.weight", r"decoder.blocks.\1.attn.q_norm.weight", _same),
    (r"model\.layers\.(\d+)\.self_attn\.q_b_proj\.weight", r"decoder.blocks.\1.attn.q_b.weight", _same),
    (r"model\.layers\.(\d+)\.self_attn\.kv_a_proj_with_mqa\.(weight|bias)", r"decoder.blocks.\1.attn.kv_a.\2", _same),
    (r"model\.layers\.(\d+)\.self_attn\.kv_a_layernorm\.weight", r"decoder.blocks.\1.attn.kv_norm.weight", _same),
    (r"model\.layers\.(\d+)\.self_attn\.kv_b_proj\.weight", r"decoder.blocks.\1.attn.kv_b.weight", _same),
    # dense FFN
    (r"model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.(weight|bias)", r"decoder.blocks.\1.ffn.\2.\3", _same),
    # MoE: the router, the correction bias, the fused experts, shared experts and their gate
    (r"model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.(?:gate|router)\.weight", r"decoder.blocks.\1.ffn.router.weight",
     _same),
    (r"model\.layers\.(\d+)\.mlp\.(?:gate|router)\.bias", r"decoder.blocks.\1.ffn.router.bias", _same),
    (r"model\.layers\.(\d+)\.mlp\.(?:gate\.)?e_score_correction_bias", r"decoder.blocks.\1.ffn.score_bias", _same),
    (r"model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\.gate_up_proj", r"decoder.blocks.\1.ffn.experts.gate",
     _half(0)),
    (r"model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\.gate_up_proj", r"decoder.blocks.\1.ffn.experts.up",
     _half(1)),
    (r"model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\.down_proj", r"decoder.blocks.\1.ffn.experts.down",
     _same),
    (r"model\.layers\.(\d+)\.mlp\.shared_experts?\.(gate|up|down)_proj\.(weight|bias)",
     r"decoder.blocks.\1.ffn.shared.\2.\3", _same),
    (r"model\.layers\.(\d+)\.mlp\.shared_expert_gate\.weight", r"decoder.blocks.\1.ffn.shared_gate.weight", _same),
]

GPT_OSS: List[Rule] = [
    (r"model\.layers\.(\d+)\.mlp\.experts\.gate_up_proj_bias", r"decoder.blocks.\1.ffn.experts.gate_bias", _interleaved(0)),
    (r"model\.layers\.(\d+)\.mlp\.experts\.gate_up_proj_bias", r"decoder.blocks.\1.ffn.experts.up_bias", _interleaved(1)),
    (r"model\.layers\.(\d+)\.mlp\.experts\.gate_up_proj", r"decoder.blocks.\1.ffn.experts.gate", _interleaved(0)),
    (r"model\.layers\.(\d+)\.mlp\.experts\.gate_up_proj", r"decoder.blocks.\1.ffn.experts.up", _interleaved(1)),
    (r"model\.layers\.(\d+)\.mlp\.experts\.down_proj_bias", r"decoder.blocks.\1.ffn.experts.down_bias", _same),
    (r"model\.layers\.(\d+)\.mlp\.experts\.down_proj", r"decoder.blocks.\1.ffn.experts.down", _t),
] + LLAMA

def _last_half(i):  # Llama 4: gate and up side by side along the last dimension, stored (E, in, 2F)
    return lambda t: t.chunk(2, dim=-1)[i].transpose(-1, -2).contiguous()


LLAMA4: List[Rule] = [
    (r"model\.layers\.(\d+)\.feed_forward\.router\.weight", r"decoder.blocks.\1.ffn.router.weight", _same),
    (r"model\.layers\.(\d+)\.feed_forward\.experts\.gate_up_proj", r"decoder.blocks.\1.ffn.experts.gate", _last_half(0)),
    (r"model\.layers\.(\d+)\.feed_forward\.experts\.gate_up_proj", r"decoder.blocks.\1.ffn.experts.up", _last_half(1)),
    (r"model\.layers\.(\d+)\.feed_forward\.experts\.down_proj", r"decoder.blocks.\1.ffn.experts.down", _t),
    (r"model\.layers\.(\d+)\.feed_forward\.shared_expert\.(gate|up|down)_proj\.weight",
     r"decoder.blocks.\1.ffn.shared.\2.weight", _same),
    (r"model\.layers\.(\d+)\.feed_forward\.(gate|up|down)_proj\.weight", r"decoder.blocks.\1.ffn.\2.weight", _same),
] + LLAMA

GEMMA: List[Rule] = [  # four norms a layer: before and after attention, before and after the FFN
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", r"decoder.blocks.\1.post.0.weight", _same),
    (r"model\.layers\.(\d+)\.pre_feedforward_layernorm\.weight", r"decoder.blocks.\1.ffn_norm.weight", _same),
    (r"model\.layers\.(\d+)\.post_feedforward_layernorm\.weight", r"decoder.blocks.\1.post.1.weight", _same),
] + LLAMA


PHI3: List[Rule] = [
    (r"model\.layers\.(\d+)\.mlp\.gate_up_proj\.weight", r"decoder.blocks.\1.ffn.gate.weight", _half(0)),
    (r"model\.layers\.(\d+)\.mlp\.gate_up_proj\.weight", r"decoder.blocks.\1.ffn.up.weight", _half(1)),
    ("qkv", r"model\.layers\.(\d+)\.self_attn\.qkv_proj\.weight", r"decoder.blocks.\1.attn.{}.weight"),
] + LLAMA

GPT2: List[Rule] = [
    (r"transformer\.wte\.weight", "embed.weight", _same),
    (r"transformer\.wpe\.weight", "positions.weight", _same),
    (r"transformer\.ln_f\.(weight|bias)", r"decoder.norm.\1", _same),
    (r"lm_head\.weight", "head.weight", _same),
    (r"transformer\.h\.(\d+)\.ln_1\.(weight|bias)", r"decoder.blocks.\1.attn_norm.\2", _same),
    (r"transformer\.h\.(\d+)\.ln_2\.(weight|bias)", r"decoder.blocks.\1.ffn_norm.\2", _same),
    ("qkv", r"transformer\.h\.(\d+)\.attn\.c_attn\.weight", r"decoder.blocks.\1.attn.{}.weight"),
    ("qkv", r"transformer\.h\.(\d+)\.attn\.c_attn\.bias", r"decoder.blocks.\1.attn.{}.bias"),
    (r"transformer\.h\.(\d+)\.attn\.c_proj\.weight", r"decoder.blocks.\1.attn.o.weight", _t),
    (r"transformer\.h\.(\d+)\.attn\.c_proj\.bias", r"decoder.blocks.\1.attn.o.bias", _same),
    (r"transformer\.h\.(\d+)\.mlp\.c_fc\.weight", r"decoder.blocks.\1.ffn.up.weight", _t),
    (r"transformer\.h\.(\d+)\.mlp\.c_fc\.bias", r"decoder.blocks.\1.ffn.up.bias", _same),
    (r"transformer\.h\.(\d+)\.mlp\.c_proj\.weight", r"decoder.blocks.\1.ffn.down.weight", _t),
    (r"transformer\.h\.(\d+)\.mlp\.c_proj\.bias", r"decoder.blocks.\1.ffn.down.bias", _same),
]

DBRX: List[Rule] = [
    (r"transformer\.wte\.weight", "embed.weight", _same),
    (r"transformer\.norm_f\.(weight|bias)", r"decoder.norm.\1", _same),
    (r"lm_head\.weight", "head.weight", _same),
    (r"transformer\.blocks\.(\d+)\.norm_attn_norm\.norm_1\.(weight|bias)", r"decoder.blocks.\1.attn_norm.\2", _same),
    (r"transformer\.blocks\.(\d+)\.norm_attn_norm\.norm_2\.(weight|bias)", r"decoder.blocks.\1.ffn_norm.\2", _same),
    ("qkv", r"transformer\.blocks\.(\d+)\.norm_attn_norm\.attn\.Wqkv\.weight", r"decoder.blocks.\1.attn.{}.weight"),
    (r"transformer\.blocks\.(\d+)\.norm_attn_norm\.attn\.out_proj\.weight", r"decoder.blocks.\1.attn.o.weight", _same),
    (r"transformer\.blocks\.(\d+)\.ffn\.router\.layer\.weight", r"decoder.blocks.\1.ffn.router.weight", _same),
    ("stacked", r"transformer\.blocks\.(\d+)\.ffn\.experts\.mlp\.w1", r"decoder.blocks.\1.ffn.experts.gate", False),
    ("stacked", r"transformer\.blocks\.(\d+)\.ffn\.experts\.mlp\.v1", r"decoder.blocks.\1.ffn.experts.up", False),
    ("stacked", r"transformer\.blocks\.(\d+)\.ffn\.experts\.mlp\.w2", r"decoder.blocks.\1.ffn.experts.down", True),
]

def _t5_rules(ffn_prefix: str) -> List[Rule]:
    """T5 and the Switch Transformer: the encoder's layers are [self-attention, FFN], the decoder's [self-attention,
    cross-attention, FFN]; the relative-position bias lives in each stack's first layer; the embedding is shared."""
    rules: List[Rule] = [
        (r"shared\.weight", "embed.weight", _same),
        (r"(?:encoder|decoder)\.embed_tokens\.weight", "embed.weight", _same),  # the shared embedding again
        (r"lm_head\.weight", "head.weight", _same),
        (r"(encoder|decoder)\.final_layer_norm\.weight", r"\1.norm.weight", _same),
        (r"(encoder|decoder)\.block\.0\.layer\.0\.SelfAttention\.relative_attention_bias\.weight",
         r"\1.relative_bias.weight", _same),
        (r"(encoder|decoder)\.block\.(\d+)\.layer\.0\.SelfAttention\.(q|k|v|o)\.weight", r"\1.blocks.\2.attn.\3.weight",
         _same),
        (r"(encoder|decoder)\.block\.(\d+)\.layer\.0\.layer_norm\.weight", r"\1.blocks.\2.attn_norm.weight", _same),
        (r"decoder\.block\.(\d+)\.layer\.1\.EncDecAttention\.(q|k|v|o)\.weight", r"decoder.blocks.\1.cross.\2.weight",
         _same),
        (r"decoder\.block\.(\d+)\.layer\.1\.layer_norm\.weight", r"decoder.blocks.\1.cross_norm.weight", _same),
    ]
    for stack, sub in (("encoder", 1), ("decoder", 2)):
        at = rf"{stack}\.block\.(\d+)\.layer\.{sub}"
        rules += [
            (rf"{at}\.layer_norm\.weight", rf"{stack}.blocks.\1.ffn_norm.weight", _same),
            (rf"{at}\.{ffn_prefix}\.wi\.weight", rf"{stack}.blocks.\1.ffn.up.weight", _same),
            (rf"{at}\.{ffn_prefix}\.wi_0\.weight", rf"{stack}.blocks.\1.ffn.gate.weight", _same),
            (rf"{at}\.{ffn_prefix}\.wi_1\.weight", rf"{stack}.blocks.\1.ffn.up.weight", _same),
            (rf"{at}\.{ffn_prefix}\.wo\.weight", rf"{stack}.blocks.\1.ffn.down.weight", _same),
            (rf"{at}\.mlp\.router\.classifier\.(weight|bias)", rf"{stack}.blocks.\1.ffn.router.\2", _same),
            ("per_expert", rf"{at}\.mlp\.experts\.expert_(\d+)\.wi\.weight", rf"{stack}.blocks.\1.ffn.experts.up"),
            ("per_expert", rf"{at}\.mlp\.experts\.expert_(\d+)\.wo\.weight", rf"{stack}.blocks.\1.ffn.experts.down"),
        ]
    return rules


BERT: List[Rule] = [
    (r"bert\.embeddings\.word_embeddings\.weight", "embed.weight", _same),
    (r"bert\.embeddings\.position_embeddings\.weight", "positions.weight", _same),
    (r"bert\.embeddings\.token_type_embeddings\.weight", "token_types.weight", _same),
    (r"bert\.embeddings\.LayerNorm\.(weight|bias)", r"embed_norm.\1", _same),
    (r"bert\.encoder\.layer\.(\d+)\.attention\.self\.query\.(weight|bias)", r"encoder.blocks.\1.attn.q.\2", _same),
    (r"bert\.encoder\.layer\.(\d+)\.attention\.self\.key\.(weight|bias)", r"encoder.blocks.\1.attn.k.\2", _same),
    (r"bert\.encoder\.layer\.(\d+)\.attention\.self\.value\.(weight|bias)", r"encoder.blocks.\1.attn.v.\2", _same),
    (r"bert\.encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"encoder.blocks.\1.attn.o.\2", _same),
    (r"bert\.encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.(weight|bias)", r"encoder.blocks.\1.attn_norm.\2",
     _same),
    (r"bert\.encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", r"encoder.blocks.\1.ffn.up.\2", _same),
    (r"bert\.encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)", r"encoder.blocks.\1.ffn.down.\2", _same),
    (r"bert\.encoder\.layer\.(\d+)\.output\.LayerNorm\.(weight|bias)", r"encoder.blocks.\1.ffn_norm.\2", _same),
    (r"cls\.predictions\.transform\.dense\.(weight|bias)", r"head_transform.\1", _same),
    (r"cls\.predictions\.transform\.LayerNorm\.(weight|bias)", r"head_norm.\1", _same),
    (r"cls\.predictions\.decoder\.weight", "embed.weight", _same),  # tied: the word embedding
    (r"cls\.predictions\.(?:decoder\.)?bias", "head_bias", _same),  # one tensor under two names
]

def _grouped_qkvz(part):
    """Qwen3-Next's in_proj_qkvz: per key head, [q (dk), k (dk), v (r*dv), z (r*dv)] (r value heads a key head);
    whatruns': [q of every head | k | v | z]. ``part`` 0..3."""
    def convert(t, model, layer):
        m = model.decoder.blocks[layer].mixer.m
        r = m.heads // m.key_heads
        sizes = [m.key_dim, m.key_dim, r * m.value_dim, r * m.value_dim]
        return t.view(m.key_heads, sum(sizes), -1).split(sizes, dim=1)[part].reshape(-1, t.shape[-1])
    return convert


def _grouped_ba(part):
    """Qwen3-Next's in_proj_ba: per key head, [b (r), a (r)]; whatruns': [b of every value head | a]."""
    def convert(t, model, layer):
        m = model.decoder.blocks[layer].mixer.m
        r = m.heads // m.key_heads
        return t.view(m.key_heads, 2 * r, -1).split([r, r], dim=1)[part].reshape(-1, t.shape[-1])
    return convert


_GDN = r"model\.layers\.(\d+)\.linear_attn"
QWEN3_NEXT: List[Rule] = [
    (rf"{_GDN}\.(conv1d\.weight|dt_bias|A_log|norm\.weight|out_proj\.weight)", r"decoder.blocks.\1.mixer.\2", _same),
    ("layered", rf"{_GDN}\.in_proj_qkvz\.weight", r"decoder.blocks.\1.mixer.in_proj_qkvz.weight", _grouped_qkvz, 4),
    ("layered", rf"{_GDN}\.in_proj_ba\.weight", r"decoder.blocks.\1.mixer.in_proj_ba.weight", _grouped_ba, 2),
    # Qwen3.5: the projections apart, concatenated in whatruns' order
    ("concat", rf"{_GDN}\.in_proj_qkv\.weight", r"decoder.blocks.\1.mixer.in_proj_qkvz.weight", 0),
    ("concat", rf"{_GDN}\.in_proj_z\.weight", r"decoder.blocks.\1.mixer.in_proj_qkvz.weight", 1),
    ("concat", rf"{_GDN}\.in_proj_b\.weight", r"decoder.blocks.\1.mixer.in_proj_ba.weight", 0),
    ("concat", rf"{_GDN}\.in_proj_a\.weight", r"decoder.blocks.\1.mixer.in_proj_ba.weight", 1),
] + LLAMA

_NEMOTRON_MOE = {"gate.weight": "router.weight", "gate.e_score_correction_bias": "score_bias",
                 "experts.up_proj": "experts.up", "experts.down_proj": "experts.down",
                 "shared_experts.up_proj.weight": "shared.up.weight", "shared_experts.down_proj.weight": "shared.down.weight",
                 "fc1_latent_proj.weight": "latent_in.weight", "fc1_latent_proj.bias": "latent_in.bias",
                 "fc2_latent_proj.weight": "latent_out.weight", "fc2_latent_proj.bias": "latent_out.bias",
                 "shared_experts.up_proj.bias": "shared.up.bias", "shared_experts.down_proj.bias": "shared.down.bias"}


def _nemotron(model, m):
    """Nemotron-H's layer i: one norm and one ``mixer`` -- Mamba-2, attention, an MLP or a MoE -- placed by what
    whatruns' layer i holds."""
    from .nn import FeedForward
    layer = model.decoder.blocks[int(m.group(1))]
    rest = m.group(2)
    if rest.startswith("norm."):
        norm = "attn_norm" if layer.attn is not None else "mixer_norm" if layer.mixer is not None else "ffn_norm"
        return f"{norm}.{rest[5:]}"
    rest = rest[len("mixer."):]
    if layer.mixer is not None:
        return "mixer." + ("norm_weight" if rest == "norm.weight" else rest)
    if layer.attn is not None:
        return "attn." + rest.replace("_proj.", ".")
    if isinstance(layer.ffn, FeedForward):
        return "ffn." + rest.replace("_proj.", ".")
    return "ffn." + _NEMOTRON_MOE.get(rest, rest)


def _gemma4_mlp(model, m):
    """Gemma 4's dense FFN: the layer's FFN, or, in a MoE layer, the dense FFN beside the experts."""
    layer = model.decoder.blocks[int(m.group(1))]
    return ("ffn.shared." if getattr(layer, "parallel", False) else "ffn.") + m.group(2)


_G4 = r"model\.layers\.(\d+)"
GEMMA4: List[Rule] = [
    (r"model\.embed_tokens_per_layer\.weight", "per_layer_embed.weight", _same),
    (r"model\.(per_layer_model_projection|per_layer_projection_norm)\.weight", r"\1.weight", _same),
    ("resolve", rf"{_G4}\.mlp\.((?:gate|up|down)_proj\.weight)", lambda model, m: _gemma4_mlp(model, m).replace(
        "_proj.", ".")),
    (rf"{_G4}\.router\.proj\.weight", r"decoder.blocks.\1.ffn.router.weight", _same),
    (rf"{_G4}\.router\.scale", r"decoder.blocks.\1.ffn.router_input_scale", _same),
    (rf"{_G4}\.router\.per_expert_scale", r"decoder.blocks.\1.ffn.per_expert_scale", _same),
    (rf"{_G4}\.experts\.gate_up_proj", r"decoder.blocks.\1.ffn.experts.gate", _half(0)),
    (rf"{_G4}\.experts\.gate_up_proj", r"decoder.blocks.\1.ffn.experts.up", _half(1)),
    (rf"{_G4}\.experts\.down_proj", r"decoder.blocks.\1.ffn.experts.down", _same),
    (rf"{_G4}\.post_feedforward_layernorm_1\.weight", r"decoder.blocks.\1.extra_norms.0.weight", _same),
    (rf"{_G4}\.post_feedforward_layernorm_2\.weight", r"decoder.blocks.\1.extra_norms.1.weight", _same),
    (rf"{_G4}\.pre_feedforward_layernorm_2\.weight", r"decoder.blocks.\1.extra_norms.2.weight", _same),
    (rf"{_G4}\.per_layer_input_gate\.weight", r"decoder.blocks.\1.per_layer_gate.weight", _same),
    (rf"{_G4}\.per_layer_projection\.weight", r"decoder.blocks.\1.per_layer_projection.weight", _same),
    (rf"{_G4}\.post_per_layer_input_norm\.weight", r"decoder.blocks.\1.per_layer_norm.weight", _same),
    (rf"{_G4}\.layer_scalar", r"decoder.blocks.\1.layer_scalar", _same),
] + [r for r in GEMMA if r[0] != r"model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.(weight|bias)"]  # placed above

NEMOTRON_H: List[Rule] = [
    (r"model\.embeddings\.weight", "embed.weight", _same),
    (r"model\.norm_f\.weight", "decoder.norm.weight", _same),
    (r"lm_head\.weight", "head.weight", _same),
    ("resolve", r"model\.layers\.(\d+)\.((?:norm|mixer)\..+)", _nemotron),
]

FAMILIES: Dict[str, List[Rule]] = {
    **{t: LLAMA for t in ("llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe",
                          "minimax_m2", "glm4_moe", "deepseek_v2", "deepseek_v3", "kimi_k2")},
    "gpt_oss": GPT_OSS,
    "gemma2": GEMMA,
    "gemma3_text": GEMMA,
    "phi3": PHI3,
    "gpt2": GPT2,
    "dbrx": DBRX,
    "llama4_text": LLAMA4,
    "t5": _t5_rules("DenseReluDense"),
    "switch_transformers": _t5_rules("mlp"),
    "bert": BERT,
}
"""The model types whose weights :func:`load_hf_state_dict` maps, each with its renaming rules."""

FAMILIES["granitemoe"] = LLAMA
FAMILIES["phimoe"] = LLAMA
FAMILIES["mimo_v2_flash"] = LLAMA
FAMILIES["step3p5"] = LLAMA
FAMILIES["nemotron_h"] = NEMOTRON_H
FAMILIES["gemma4_text"] = GEMMA4
FAMILIES["qwen3_next"] = FAMILIES["qwen3_5_text"] = FAMILIES["qwen3_5_moe_text"] = QWEN3_NEXT
FAMILIES["deepseek_v32"] = FAMILIES["glm_moe_dsa"] = [
    (r"model\.layers\.(\d+)\.self_attn\.indexer\.(wq_b|wk|weights_proj)\.weight", r"decoder.blocks.\1.attn.indexer.\2.weight",
     _same),
    (r"model\.layers\.(\d+)\.self_attn\.indexer\.k_norm\.(weight|bias)", r"decoder.blocks.\1.attn.indexer.k_norm.\2", _same),
] + LLAMA
FAMILIES["qwen3_vl_moe_text"] = LLAMA


WRAPPED: Dict[str, Tuple[str, str, str]] = {
    "step3p7": ("step3p5", "model.language_model.", "model."),
    "qwen3_vl_moe": ("qwen3_vl_moe_text", "model.language_model.", "model."),
    "qwen3_5": ("qwen3_5_text", "model.language_model.", "model."),
    "qwen3_5_moe": ("qwen3_5_moe_text", "model.language_model.", "model."),
    "gemma3": ("gemma3_text", "model.language_model.", "model."),
    "gemma4": ("gemma4_text", "model.language_model.", "model."),
    "kimi_k25": ("deepseek_v3", "model.language_model.", "model."),
    "llama4": ("llama4_text", "language_model.", ""),  # a whole Llama4ForCausalLM inside, its head too
}
"""Wrapper (multimodal) model types whose text model's weights :func:`load_hf_state_dict` maps: the text
model's family, the prefix its weights have inside the wrapper, and what that prefix stands for in the text
model's own names. The vision (and audio) towers and projectors are not part of the text model: their tensors
are left out."""

_TOWERS = ("model.visual.", "model.vision_model.", "model.vision_tower.", "model.multi_modal_projector.",
           "model.audio_tower.", "model.embed_vision.", "model.embed_audio.", "model.mm_projector.", "vision_tower.",
           "vision_model.", "multi_modal_projector.")


def _text_weights(state_dict, model_type):
    """The text model's tensors of a wrapper's state dict, under the text model's own names."""
    family, prefix, stands_for = WRAPPED[model_type]
    out = {}
    for name, tensor in state_dict.items():
        if name.startswith(prefix):
            out[stands_for + name[len(prefix):]] = tensor
        elif not name.startswith(_TOWERS):
            out[name] = tensor
    return out, family


def _qkv_sizes(model, layer: int):
    a = model.decoder.blocks[layer].attn.a
    return [a.heads * a.head_dim, a.kv_heads * a.head_dim, a.kv_heads * a.v_head_dim]


def convert_state_dict(state_dict: Dict[str, torch.Tensor], model_type: str, model) -> Dict[str, torch.Tensor]:
    """``state_dict`` (transformers' names) renamed and reshaped into ``model``'s (a
    :class:`whatruns.nn.TransformerLM` built from the same config). Buffers transformers recomputes
    (rotary frequencies) are skipped; every other tensor must land somewhere."""
    if model_type in WRAPPED:
        state_dict, model_type = _text_weights(state_dict, model_type)
    rules = FAMILIES.get(model_type)
    if rules is None:
        raise SpecError(f"whatruns cannot load {model_type!r} weights yet; it loads {', '.join(sorted(FAMILIES))}")
    out: Dict[str, torch.Tensor] = {}
    experts: Dict[str, Dict[int, torch.Tensor]] = {}  # per-expert matrices (Switch), stacked at the end
    pieces: Dict[str, Dict[int, torch.Tensor]] = {}  # projections stored apart (Qwen3.5), concatenated at the end
    for name, tensor in state_dict.items():
        if name.endswith(("rotary_emb.inv_freq", "rotary_emb.original_inv_freq", ".masked_bias", ".attn.bias")):
            continue  # recomputed buffers (rotary frequencies; GPT-2's causal mask)
        if name == "lm_head.weight" and model.spec.tied:
            continue  # the embedding itself
        if tensor.numel() == 0:
            continue  # a zero-width layer (DeepSeek's shared FFN when n_shared_experts is 0): nothing to load
        targets = {}
        for rule in rules:  # every rule that takes the tensor (a fused one is split); the first per target
            if rule[0] == "qkv":  # one fused projection into q, k and v
                _, pattern, target = rule
                m = re.fullmatch(pattern, name)
                if not m:
                    continue
                sizes = _qkv_sizes(model, int(m.group(1)))
                conv1d = name.startswith("transformer.h.") and name.endswith("weight")  # GPT-2 stores (in, out)
                for key, part in zip("qkv", torch.split(tensor, sizes, dim=-1 if conv1d else 0)):
                    targets.setdefault(m.expand(target).format(key), _t(part) if conv1d else part.contiguous())
                continue
            if rule[0] == "resolve":  # a target that depends on what the layer is
                _, pattern, place = rule
                m = re.fullmatch(pattern, name)
                if m:
                    targets.setdefault(f"decoder.blocks.{m.group(1)}." + place(model, m), tensor)
                continue
            if rule[0] == "layered":  # a conversion that reads the layer's shapes: one part of a fused tensor each
                _, pattern, target, convert, parts = rule
                m = re.fullmatch(pattern, name)
                if m:
                    layer = int(m.group(1))
                    targets.setdefault(m.expand(target), torch.cat([convert(p)(tensor, model, layer)
                                                                    for p in range(parts)]).contiguous())
                continue
            if rule[0] == "concat":
                _, pattern, target, index = rule
                m = re.fullmatch(pattern, name)
                if m:
                    pieces.setdefault(m.expand(target), {})[index] = tensor
                    targets[None] = None
                continue
            if rule[0] == "per_expert":  # one expert's matrix: a slice of a stacked (E, out, in) parameter
                _, pattern, target = rule
                m = re.fullmatch(pattern, name)
                if m:
                    experts.setdefault(m.expand(target), {})[int(m.group(2))] = tensor
                    targets[None] = None  # placed
                continue
            if rule[0] == "stacked":  # E experts' matrices stacked along the rows, (E * F, D)
                _, pattern, target, down = rule
                m = re.fullmatch(pattern, name)
                if m:
                    E = model.decoder.blocks[int(m.group(1))].ffn.m.experts
                    t = tensor.view(E, -1, tensor.shape[-1])
                    targets.setdefault(m.expand(target), _t(t) if down else t.contiguous())
                continue
            pattern, target, convert = rule
            m = re.fullmatch(pattern, name)
            if m and m.expand(target) not in targets:
                targets[m.expand(target)] = convert(tensor)
        if not targets:
            raise SpecError(f"{model_type} weights: no place in the whatruns model for {name!r}")
        out.update({k: v for k, v in targets.items() if k is not None})
    for target, parts in pieces.items():
        out[target] = torch.cat([parts[i] for i in sorted(parts)])
    for target, parts in experts.items():
        if sorted(parts) != list(range(len(parts))):
            raise SpecError(f"{model_type} weights: {target!r} has experts {sorted(parts)}, not 0..{len(parts) - 1}")
        out[target] = torch.stack([parts[e] for e in range(len(parts))])
    return out


def load_hf_state_dict(model, state_dict: Dict[str, torch.Tensor], model_type: str) -> None:
    """Load transformers' ``state_dict`` into ``model`` (built by :func:`whatruns.build` from the same config):
    every parameter and buffer of ``model`` is set, or a :class:`~whatruns.spec.SpecError` says which is not."""
    converted = convert_state_dict(state_dict, model_type, model)
    own = model.state_dict()
    # the norm before a layer's mixer: ``attn_norm`` when it is attention, ``mixer_norm`` (DeltaNet, Mamba-2)
    converted = {k.replace(".attn_norm.", ".mixer_norm.") if k not in own and
                 k.replace(".attn_norm.", ".mixer_norm.") in own else k: v for k, v in converted.items()}
    missing = [k for k in own if k not in converted and not k.endswith("score_bias")]
    extra = [k for k in converted if k not in own]
    if extra:
        raise SpecError(f"{model_type} weights: {extra[0]!r} has no counterpart in the whatruns model")
    if model.spec.tied:
        missing = [k for k in missing if k != "head.weight"]
    if missing:
        raise SpecError(f"{model_type} weights: nothing loads {missing[0]!r}")
    for k, v in converted.items():
        if tuple(own[k].shape) != tuple(v.shape):
            raise SpecError(f"{model_type} weights: {k!r} is {tuple(own[k].shape)} in whatruns, {tuple(v.shape)} given")
    model.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in converted.items()}})


def from_transformers(hf_model, **build_options):
    """The whatruns model of a ``transformers`` model's config, with its weights: for a model of a type in
    :data:`FAMILIES`, the same function (logits equal to float tolerance). ``build_options`` go to
    :func:`whatruns.build` (``moe_strategy`` ...)."""
    from . import build, load
    config = hf_model.config.to_dict()
    spec = load(config)
    model = build(spec, **build_options)
    model_type = config["model_type"]
    load_hf_state_dict(model, hf_model.state_dict(), model_type)
    return model.eval()
