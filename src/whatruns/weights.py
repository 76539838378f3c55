"""Weights in, logits out: a ``transformers`` model's weights loaded into the whatruns model of the same config.

    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_config(config)      # or from_pretrained(...)
    model = whatruns.weights.from_transformers(hf)     # whatruns.build of the same config, hf's weights in it
    torch.testing.assert_close(model(ids), hf(ids).logits)

:func:`load_hf_state_dict` maps a state dict by name, family by family (:data:`FAMILIES`): the same tensors,
renamed, and fused ones split -- q/k/v (Phi-3, GPT-2), gate/up (experts of every MoE, Phi-3), the
interleaved gate/up and the (in, out) orientation of gpt-oss's experts, GPT-2's Conv1D. A tensor it
does not place, or a parameter it leaves empty, is an error: nothing is loaded silently wrong. It reads
tensors only; it never runs code from a checkpoint.
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

FAMILIES: Dict[str, List[Rule]] = {
    **{t: LLAMA for t in ("llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe",
                          "minimax_m2", "glm4_moe", "deepseek_v2", "deepseek_v3", "kimi_k2")},
    "gpt_oss": GPT_OSS,
    "gemma2": GEMMA,
    "gemma3_text": GEMMA,
    "phi3": PHI3,
    "gpt2": GPT2,
}
"""The model types whose weights :func:`load_hf_state_dict` maps, each with its renaming rules."""

FAMILIES["granitemoe"] = LLAMA


def _qkv_sizes(model, layer: int):
    a = model.decoder.blocks[layer].attn.a
    return [a.heads * a.head_dim, a.kv_heads * a.head_dim, a.kv_heads * a.v_head_dim]


def convert_state_dict(state_dict: Dict[str, torch.Tensor], model_type: str, model) -> Dict[str, torch.Tensor]:
    """``state_dict`` (transformers' names) renamed and reshaped into ``model``'s (a
    :class:`whatruns.nn.TransformerLM` built from the same config). Buffers transformers recomputes
    (rotary frequencies) are skipped; every other tensor must land somewhere."""
    rules = FAMILIES.get(model_type)
    if rules is None:
        raise SpecError(f"whatruns cannot load {model_type!r} weights yet; it loads {', '.join(sorted(FAMILIES))}")
    out: Dict[str, torch.Tensor] = {}
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
            pattern, target, convert = rule
            m = re.fullmatch(pattern, name)
            if m and m.expand(target) not in targets:
                targets[m.expand(target)] = convert(tensor)
        if not targets:
            raise SpecError(f"{model_type} weights: no place in the whatruns model for {name!r}")
        out.update(targets)
    return out


def load_hf_state_dict(model, state_dict: Dict[str, torch.Tensor], model_type: str) -> None:
    """Load transformers' ``state_dict`` into ``model`` (built by :func:`whatruns.build` from the same config):
    every parameter and buffer of ``model`` is set, or a :class:`~whatruns.spec.SpecError` says which is not."""
    converted = convert_state_dict(state_dict, model_type, model)
    own = model.state_dict()
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
