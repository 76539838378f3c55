"""Serving bytes (whatruns.serve): the KV cache against hand formulas, the checkpoint's tensors against
count(), weights as stored against published checkpoint sizes, the roofline decode model, and the CLI."""

from __future__ import annotations

import glob
import json
import math
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_cli import assert_one_line_error, run
from test_hf import GENERATORS as HF_GENERATORS
from test_nn import FAMILIES
from test_nn import transformers as nn_transformers
from whatruns import catalog, count, load
from whatruns.count import experts_touched
from whatruns.serve import (ACCELERATORS, weight_bytes_read, KV_KINDS, accelerator, check_fits, decode_flops, decode_step,
                            devices_needed, kv_cache_bytes, kv_crossover, max_batch, max_context, memory_needed,
                            prefill, weight_bytes, weight_tensors)
from whatruns.spec import (FFN, Attention, Block, Indexer, LinearAttention, Mamba2, MoE, Norm, Run, SpecError,
                           Storage, Transformer)

T = 4096
BF16 = 2

# ------------------------------------------------------------------------------------------ KV cache


def test_kv_cache_mixtral_8x7b():
    # 32 layers, 8 key/value heads of 128 (GQA: 32 query heads share them), K and V, bf16, no window
    # (its config's sliding_window is null)
    assert kv_cache_bytes(catalog.spec("mixtral-8x7b"), T).total == 2 * 32 * 8 * 128 * BF16 * T  # 128 KiB a token


def test_kv_cache_qwen3_235b():
    # 94 layers, 4 key/value heads of 128 (64 query heads)
    assert kv_cache_bytes(catalog.spec("qwen3-235b-a22b"), T).total == 2 * 94 * 4 * 128 * BF16 * T


def test_kv_cache_deepseek_v3_latent_and_expanded():
    kv = kv_cache_bytes(catalog.spec("deepseek-v3"), T)
    # MLA caches per layer and token its key/value latent (kv_lora_rank 512) and the shared rotary key (64)
    assert kv.total == kv.mla_latent == 61 * (512 + 64) * BF16 * T
    # expanded, as an implementation without MLA kernels (transformers' own) caches it: 128 heads of
    # keys (128 + 64) and values (128)
    assert kv.mla_expanded == 61 * 128 * ((128 + 64) + 128) * BF16 * T
    assert kv_cache_bytes(catalog.spec("deepseek-v3"), T, mla="expanded").total == kv.mla_expanded
    assert kv.mla_expanded // kv.mla_latent == 71  # the ~70x an MHA-style calculator overstates MLA by


def test_kv_cache_gpt_oss_120b():
    # 36 layers alternate: 18 full (all 4096 tokens) and 18 with a 128-token window; 8 KV heads of 64
    kv = kv_cache_bytes(catalog.spec("gpt-oss-120b"), T)
    assert kv.breakdown == {"attention": 18 * 2 * 8 * 64 * BF16 * T, "sliding": 18 * 2 * 8 * 64 * BF16 * 128}
    assert kv.total == 2 * 8 * 64 * BF16 * 18 * (T + 128)


def test_kv_cache_batch_dtype_and_runs():
    s = catalog.spec("mixtral-8x7b")
    one = kv_cache_bytes(s, 1000).total
    assert kv_cache_bytes(s, 1000, batch=7).total == 7 * one
    assert kv_cache_bytes(s, 1000, dtype="float8_e4m3fn").total * 2 == one
    assert kv_cache_bytes(s, 1000, dtype=4).total == 2 * one
    # a run of 32 equal layers is one term times 32
    assert len(s.blocks) == 1 and kv_cache_bytes(s.with_(layers=1), 1000).total * 32 == one
    big = s.with_(layers=2 ** 16)  # 65,536 layers: one run, read in one step
    assert kv_cache_bytes(big, 10).total == 2 ** 16 * kv_cache_bytes(s.with_(layers=1), 10).total


def _hybrid():
    """A model with every kind of layer state: full, windowed and chunked GQA, MLA with an indexer,
    gated DeltaNet, Mamba-2, and an FFN-only layer."""
    D = 64
    gqa = Attention(8, 2, 16)
    mla = Attention(4, 4, 24, v_head_dim=16, q_lora_rank=32, kv_lora_rank=40, rope_head_dim=8,
                    indexer=Indexer(heads=2, head_dim=12, top_k=64))
    la = LinearAttention(heads=4, key_heads=2, key_dim=16, value_dim=8, conv=4)
    ssm = Mamba2(heads=4, head_dim=8, state=16, groups=2, conv=4)
    ffn = FFN(128)
    blocks = [Run(Block(gqa, ffn), 2), Run(Block(gqa.with_(window=100), ffn), 3),
              Run(Block(gqa.with_(chunk=256), ffn), 1), Run(Block(mla, ffn), 2), Run(Block(la, ffn), 4),
              Run(Block(ssm, None), 5), Run(Block(None, ffn), 1)]
    return Transformer(vocab=100, width=D, blocks=blocks, storage=Storage("bfloat16"))


@pytest.mark.parametrize("T_", [1, 50, 100, 300, 5000])
def test_kv_cache_every_kind_of_layer(T_):
    kv = kv_cache_bytes(_hybrid(), T_, dtype=1)
    kvd = 2 * (16 + 16)  # 2 key/value heads, each a key and a value of 16
    expected = {
        "attention": 2 * T_ * kvd,
        "sliding": 3 * min(T_, 100) * kvd,
        "chunked": 1 * min(T_, 256) * kvd,
        "mla": 2 * T_ * (40 + 8),
        "indexer": 2 * T_ * 12,  # the indexer scores every key: no cap at top_k
        "linear_attention": 4 * (4 * 16 * 8 + 3 * (2 * 2 * 16 + 4 * 8)),  # state + conv tail, flat in T
        "ssm": 5 * (4 * 8 * 16 + 3 * (4 * 8 + 2 * 2 * 16)),
    }
    assert kv.breakdown == expected
    assert set(kv.breakdown) <= set(KV_KINDS)


def test_kv_cache_encoder_decoder_and_encoder_only():
    s = catalog.spec("switch-base-128")  # T5: 12 + 12 layers, 12 heads of 64, cross-attention in the decoder
    kv = kv_cache_bytes(s, 512, encoder_len=100)
    assert kv.breakdown == {"attention": 12 * 512 * 2 * 12 * 64 * BF16,
                            "cross_attention": 12 * 100 * 2 * 12 * 64 * BF16}
    encoder_only = Transformer(vocab=50, width=16, blocks=(), encoder=[Run(Block(Attention(2, 2, 8), FFN(32)), 3)])
    assert kv_cache_bytes(encoder_only, 512).total == 0
    with pytest.raises(SpecError, match="does not decode"):
        decode_step(encoder_only, "h100")


def test_kv_cache_bad_input():
    s = catalog.spec("mixtral-8x7b")
    for kw, frag in ((dict(seq_len=0), "seq_len"), (dict(seq_len=8, batch=0), "batch"),
                     (dict(seq_len=8, dtype="bf61"), "unknown KV-cache dtype"),
                     (dict(seq_len=8, mla="compressed"), "mla"), (dict(seq_len=2 ** 40), "bound")):
        with pytest.raises(SpecError, match=frag):
            kv_cache_bytes(s, **kw)
    with pytest.raises(SpecError, match="no KV cache"):
        kv_cache_bytes(catalog.spec("dlrm-v2"), 8)


# ------------------------------------------------------------------------------------------ tensors


def _params(tensors):
    return sum(t.numel for t in tensors if not t.buffer)


def _by_component(tensors):
    out = {}
    for t in tensors:
        if not t.buffer:
            out[t.component] = out.get(t.component, 0) + t.numel
    return out


def _check_tensors(spec):
    c = count(spec)
    ts = weight_tensors(spec)
    assert _params(ts) == c.total_params
    assert _by_component(ts) == {k: p.params for k, p in c.breakdown.items() if p.params}


@pytest.mark.parametrize("name", catalog.names())
def test_tensors_of_catalog_models_add_up_to_count(name):
    _check_tensors(catalog.spec(name))


@pytest.mark.parametrize("path", sorted(glob.glob("tests/configs/*.json")))
def test_tensors_of_published_configs_add_up_to_count(path):
    _check_tensors(load(path))


SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_tensors_of_random_specs_add_up_to_count(family, data):
    _check_tensors(data.draw(nn_transformers(family=family)))


@pytest.mark.parametrize("model_type", sorted(HF_GENERATORS))
def test_tensors_of_random_configs_of_every_model_type_add_up_to_count(model_type):
    """test_hf's random configs of every model type whatruns reads, loaded as specs."""
    @settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(HF_GENERATORS[model_type])
    def run(cfg):
        try:
            spec = load(cfg)
        except SpecError:  # a generated config whatruns refuses, as it should (test_hf checks which)
            return
        _check_tensors(spec)
    run()


@st.composite
def hybrids(draw):
    """Layer kinds test_nn's families do not reach: gated DeltaNet, Mamba-2, MLA with an indexer, output
    gates, QK-norm over all heads, windows and chunks, latent MoE with shared experts, FFN-only layers,
    post-norms, and BERT-style encoders."""
    small = st.integers
    D = 8 * draw(small(1, 4))
    H = draw(st.sampled_from((2, 4)))
    dh = draw(small(2, 8))
    att = Attention(H, draw(st.sampled_from((1, H))), dh, bias=draw(st.booleans()),
                    out_bias=draw(st.booleans()), qk_norm=draw(st.sampled_from((None, "head", "full"))),
                    gate=draw(st.sampled_from((None, "channel", "head"))), sinks=draw(st.booleans()),
                    values_from_keys=draw(st.booleans()), window=draw(st.sampled_from((0, 16))))
    reader = att.with_(kv_shared=True, values_from_keys=False)  # reads the keys and values of an `att` layer
    # an indexer or chunks, not both (count.attention_keys lets an indexer's top_k override a window or chunk,
    # where a decode step keeps the smaller: no published model has both)
    sparse = draw(st.booleans())
    mla = Attention(H, H, 10, v_head_dim=6, q_lora_rank=12, kv_lora_rank=9, rope_head_dim=4,
                    indexer=Indexer(2, 4, 8) if sparse else None, chunk=0 if sparse else draw(st.sampled_from((0, 32))))
    mixers = [att, mla, LinearAttention(4, 2, 4, 6, conv=draw(small(2, 4))),
              Mamba2(4, 4, 8, groups=draw(st.sampled_from((1, 2))), conv_bias=draw(st.booleans()),
                     bias=draw(st.booleans())), None]
    shared = draw(st.booleans())
    moe = MoE(experts=draw(small(2, 6)), top_k=1, expert=FFN(8, gated=draw(st.booleans()), bias=draw(st.booleans())),
              shared=FFN(16) if shared else None, shared_experts=int(shared),
              shared_gate=shared and draw(st.booleans()),
              latent=draw(st.sampled_from((0, 4))), router_bias=draw(st.booleans()),
              score_bias=draw(st.booleans()), router_scale=draw(st.booleans()))
    ffns = [FFN(16, bias=draw(st.booleans())), moe, None]
    blocks = [Run(Block(att, FFN(16)), 1)]  # the layer whose keys and values the readers share
    for _ in range(draw(small(0, 4))):
        m = draw(st.sampled_from(mixers + [reader]))
        if m is mla and m.indexer is not None and draw(st.booleans()):  # and a layer reading its picks
            blocks.append(Run(Block(m, FFN(16)), 1))
            m = m.with_(indexer=m.indexer.with_(shared=True))
        f = draw(st.sampled_from(ffns if m is not None else ffns[:2]))
        blocks.append(Run(Block(m, f, post_norms=draw(st.booleans()), extra_norms=draw(small(0, 2))),
                          draw(small(1, 3))))
    norm = draw(st.sampled_from((Norm(), Norm("layernorm", bias=True))))
    if draw(st.booleans()):  # an encoder alone, BERT's way
        enc = [Run(Block(att.with_(window=0), FFN(16)), draw(small(1, 2)))]
        return Transformer(vocab=draw(small(5, 50)), width=D, blocks=(), encoder=enc, norm=norm, tied=True,
                           positions=draw(small(0, 8)), token_types=draw(small(0, 2)), embedding_norm=True,
                           head_transform=draw(st.booleans()), head_bias=draw(st.booleans()))
    P = draw(st.sampled_from((0, 4)))  # Gemma 4's per-layer embeddings
    return Transformer(vocab=draw(small(5, 50)), width=D, blocks=blocks, norm=norm, tied=draw(st.booleans()),
                       head_bias=draw(st.booleans()), per_layer_input=P, per_layer_vocab=draw(small(3, 9)) if P else 0)


@SETTINGS
@given(spec=hybrids())
def test_tensors_of_hybrid_specs_add_up_to_count(spec):
    _check_tensors(spec)
    wb = weight_bytes(spec, "bfloat16")
    buffers = sum(t.numel for t in weight_tensors(spec) if t.buffer)
    assert wb.total == BF16 * (count(spec).total_params + buffers)


def test_buffers_the_checkpoint_stores():
    """DeepSeek-V3's routing-score correction bias is a buffer in transformers (so in no parameter count)
    but the checkpoint stores it, in float32, one per routed expert and MoE layer (58 x 256)."""
    ts = weight_tensors(catalog.spec("deepseek-v3"))
    (bias,) = [t for t in ts if t.buffer]
    assert bias.name == "model.layers.{i}.mlp.gate.e_score_correction_bias" and bias.dtype == "float32"
    assert bias.numel == 58 * 256
    assert weight_bytes(catalog.spec("deepseek-v3")).by_format["float32"] == 4 * 58 * 256


# ------------------------------------------------------------------------------------------ weights as stored
# Published checkpoints: "total_size" in each one's model.safetensors.index.json (the bytes of its tensors,
# headers excluded).


def test_gpt_oss_120b_checkpoint_bytes_exactly():
    # openai/gpt-oss-120b, model.safetensors.index.json: "total_size": 65248815744 (the model card's 60.8 GiB)
    w = weight_bytes(catalog.spec("gpt-oss-120b"))
    assert w.total == 65_248_815_744
    # MXFP4: the experts' 36 x 128 x 3 matrices of 2880 x 2880 at 4.25 bits; everything else bf16
    experts = 36 * 128 * 3 * 2880 * 2880
    assert w.by_format["mxfp4 blocks"] == experts // 2 and w.by_format["uint8 scales"] == experts // 32
    assert w.by_format["bfloat16"] == BF16 * (count(catalog.spec("gpt-oss-120b")).total_params - experts)


PUBLISHED = [
    # (config, total_size, source)
    ("tests/configs/gpt-oss-20b.json", 13_761_264_768,
     "openai/gpt-oss-20b model.safetensors.index.json, metadata.total_size 13761264768 (a copy of the index "
     "and config found through the search tools; the model card prints 12.8 GiB); MXFP4 experts"),
    ("tests/configs/Qwen3-30B-A3B.json", 61_064_245_248,
     "Qwen/Qwen3-30B-A3B model.safetensors.index.json, metadata.total_size 61064245248 (16 shards; quoted as "
     "the safetensors total in several public repositories); bf16"),
    ("tests/configs/Meta-Llama-3-8B.json", 16_060_522_496,
     "meta-llama/Meta-Llama-3-8B model.safetensors.index.json, metadata.total_size 16060522496 (4 shards; the "
     "example index of the Hugging Face Hub's Transformers documentation); bf16"),
    ("qwen3-235b-a22b", 470_187_269_120,
     "Qwen/Qwen3-235B-A22B model.safetensors.index.json, metadata.total_size 470187269120 (asserted against "
     "the official index by a public test suite); bf16"),
]


@pytest.mark.parametrize("source,total,cited", PUBLISHED, ids=[p[0].split("/")[-1] for p in PUBLISHED])
def test_published_checkpoint_sizes(source, total, cited):
    w = weight_bytes(load(source))
    assert abs(w.total - total) <= 0.005 * total, cited
    assert w.total == total  # in fact exactly


def test_deepseek_v3_checkpoint_holds_the_mtp_module_too():
    """DeepSeek-V3's published checkpoint (deepseek-ai/DeepSeek-V3, 163 safetensors files totalling
    688,586,727,753 bytes at revision afb92e1f, headers included) stores besides the 671B model its
    multi-token-prediction module (README_WEIGHTS.md: layer 61, one more MoE layer like layers 3-60, with
    enorm, hnorm, eh_proj, and the checkpoint's own copies of embed_tokens and shared_head.head; a tensor
    listing of the same-format DeepSeek-R1 checkpoint gives eh_proj [7168, 14336] in bf16 and a total of
    641.29 GiB). whatruns counts what transformers builds, which has no MTP module, so weight_bytes alone
    falls short by that module; adding it by hand lands within 0.01% of the files."""
    s = catalog.spec("deepseek-v3")
    w = weight_bytes(s)
    files = 688_586_727_753
    assert 0.02 < 1 - w.total / files < 0.03  # the MTP module: about 2.2% of the bytes
    D, V = s.width, s.vocab
    moe_layer = sum(b // (t.layers[1] - t.layers[0]) for t, b in w.entries if t.layers == (3, 61))
    mtp = moe_layer + 2 * D * 2 * D + 3 * D * 2 + 2 * V * D * 2  # layer + eh_proj + 3 norms + embed/head copies
    assert abs(w.total + mtp - files) / files < 1e-4
    assert abs((w.total + mtp) / 2 ** 30 - 641.29) < 0.005  # the R1 listing's tensor total, in GiB


def test_bf16_habit_overstates_quantized_checkpoints():
    for name, low, high in (("gpt-oss-120b", 3.5, 3.7), ("deepseek-v3", 1.9, 2.1)):
        s = catalog.spec(name)
        assert low < weight_bytes(s, "bfloat16").total / weight_bytes(s).total < high


def _tiny(storage=None, **kw):
    """Two layers: GQA attention with biases, a gated FFN in layer 0, a 4-expert MoE in layer 1."""
    a = Attention(4, 2, 32, bias=True)
    return Transformer(vocab=1000, width=256, layers=2, attention=a, ffn=FFN(384), moe=MoE(4, 2, FFN(160)),
                       moe_layers=[1], storage=storage or Storage("bfloat16"), **kw)


def _q(**q):
    return Storage.of("bfloat16", q)


def _linears(spec, keep=lambda t: True):
    return [t for t in weight_tensors(spec) if t.role == "linear" and keep(t)]


def test_fp8_block_scales():
    plain = weight_bytes(_tiny()).total
    w = weight_bytes(_tiny(_q(quant_method="fp8", fmt="e4m3", weight_block_size=[128, 128])))
    lin = _linears(_tiny())
    numel = sum(t.numel for t in lin)
    scales = sum(t.copies * math.ceil(t.shape[0] / 128) * math.ceil(t.shape[1] / 128) for t in lin)
    assert w.by_format["float8_e4m3fn"] == numel and w.by_format["float32 scales"] == 4 * scales
    assert w.total == plain - numel + 4 * scales  # each linear weight: 2 bytes -> 1 byte plus its scales
    # the router, norms, biases, embeddings and head stay bf16
    assert w.by_format["bfloat16"] == plain - 2 * numel
    # a 160 x 256 expert matrix has ceil(160/128) x ceil(256/128) = 2 x 2 blocks (padded, as DeepSeek's)
    assert math.ceil(160 / 128) * math.ceil(256 / 128) == 4
    static = weight_bytes(_tiny(_q(quant_method="fp8", activation_scheme="static")))
    assert static.total - w.total == 4 * sum(t.copies for t in lin)


def test_modules_to_not_convert_per_layer_and_by_other_families_names():
    base = dict(quant_method="fp8", weight_block_size=[128, 128])
    w = weight_bytes(_tiny(_q(**base)))
    attention = sum(t.numel for t in _linears(_tiny(), lambda t: ".self_attn." in t.name))
    skip_attn = weight_bytes(_tiny(_q(**base, modules_to_not_convert=["model.layers.*.self_attn"])))
    assert skip_attn.by_format["float8_e4m3fn"] == w.by_format["float8_e4m3fn"] - attention
    # a pattern naming one layer reaches that layer only
    layer1 = sum(t.numel for t in _linears(_tiny(), lambda t: ".self_attn." in t.name and t.layers == (1, 2)))
    one = weight_bytes(_tiny(_q(**base, modules_to_not_convert=["model.layers.1.self_attn"])))
    assert one.by_format["float8_e4m3fn"] == w.by_format["float8_e4m3fn"] - layer1 == w.by_format[
        "float8_e4m3fn"] - attention // 2
    # ... also inside a run of many layers (one name per copy, only for such index-naming patterns)
    long = _tiny(_q(**base, modules_to_not_convert=["model.layers.3.self_attn", r"model\.layers\.1[0-9]\.self_attn"]))
    long = long.with_(layers=40)
    per_layer = attention // 2
    assert weight_bytes(long).by_format["float8_e4m3fn"] == weight_bytes(long.with_(storage=_q(**base))).by_format[
        "float8_e4m3fn"] - 11 * per_layer
    # Mixtral calls the experts block_sparse_moe.experts.{e}.w1/w2/w3
    experts = sum(t.numel for t in _linears(_tiny(), lambda t: t.expert))
    mixtral = weight_bytes(_tiny(_q(**base, modules_to_not_convert=["model.layers.*.block_sparse_moe.experts"])))
    assert mixtral.by_format["float8_e4m3fn"] == w.by_format["float8_e4m3fn"] - experts
    # transformers' suffix rule: "o_proj" names every layer's output projection, "gate" the router only
    o = sum(t.numel for t in _linears(_tiny(), lambda t: "o_proj" in t.name))
    assert weight_bytes(_tiny(_q(**base, modules_to_not_convert=["o_proj", "gate"]))).by_format[
        "float8_e4m3fn"] == w.by_format["float8_e4m3fn"] - o


def test_mxfp4_converts_only_the_experts():
    w = weight_bytes(_tiny(Storage.of(None, {"quant_method": "mxfp4"})))  # gpt-oss names no dtype: bf16
    experts = sum(t.numel for t in _linears(_tiny(), lambda t: t.expert))
    assert w.by_format["mxfp4 blocks"] == experts // 2 and w.by_format["uint8 scales"] == experts // 32
    assert w.total == weight_bytes(_tiny()).total - 2 * experts + experts * 17 // 32  # 4.25 bits a weight


def test_nvfp4_and_modelopt_fp8():
    lin = [t for t in weight_tensors(_tiny()) if t.linear]
    numel, n = sum(t.numel for t in lin), sum(t.copies for t in lin)
    w = weight_bytes(_tiny(_q(quant_method="modelopt", quant_algo="NVFP4", group_size=16)))
    assert w.by_format["nvfp4 values"] == numel // 2 and w.by_format["float8_e4m3fn scales"] == numel // 16
    assert w.by_format["float32 scales"] == 8 * n  # weight_scale_2 and input_scale per Linear
    head = 1000 * 256
    excl = weight_bytes(_tiny(_q(quant_method="modelopt", quant_algo="NVFP4",
                                 exclude_modules=["lm_head", "*mlp.gate"])))
    assert excl.by_format["nvfp4 values"] == (numel - head - 4 * 256) // 2
    fp8 = weight_bytes(_tiny(_q(quant_method="modelopt", quant_algo="FP8")))
    assert fp8.by_format["float8_e4m3fn"] == numel and fp8.by_format["float32 scales"] == 8 * n


def test_gptq_and_awq_int4():
    lin = _linears(_tiny())
    numel = sum(t.numel for t in lin)
    groups_out = sum(t.copies * math.ceil(t.shape[1] / 128) * t.shape[0] for t in lin)
    ins = sum(t.copies * t.shape[1] for t in lin)
    g = weight_bytes(_tiny(Storage.of("float16", {"quant_method": "gptq", "bits": 4, "group_size": 128})))
    assert g.by_format["int4 packed"] == numel // 2
    assert g.by_format["int32 zeros"] == groups_out // 2 and g.by_format["float16 scales"] == 2 * groups_out
    assert g.by_format["int32 g_idx"] == 4 * ins
    a = weight_bytes(_tiny(Storage.of("float16", {"quant_method": "awq", "bits": 4, "group_size": 128,
                                                  "version": "gemm", "zero_point": True})))
    assert a.total == g.total - 4 * ins  # AWQ stores no g_idx
    per_channel = weight_bytes(_tiny(Storage.of("float16", {"quant_method": "gptq", "bits": 8, "group_size": -1})))
    assert per_channel.by_format["int8 packed"] == numel
    with pytest.raises(SpecError, match="version 'gemv'"):
        weight_bytes(_tiny(Storage.of("float16", {"quant_method": "awq", "version": "gemv"})))


def test_compressed_tensors_w4a16_and_fp8():
    lin = [t for t in weight_tensors(_tiny()) if t.linear and t.name != "lm_head.weight"]
    numel, n = sum(t.numel for t in lin), sum(t.copies for t in lin)
    groups = sum(t.copies * t.shape[0] * math.ceil(t.shape[1] / 128) for t in lin)
    w4 = {"quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": ["lm_head"],
          "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
              "num_bits": 4, "type": "int", "strategy": "group", "group_size": 128, "symmetric": True}}}}
    w = weight_bytes(_tiny(_q(**w4)))
    assert w.by_format["int4 packed"] == numel // 2 and w.by_format["int64 weight_shape"] == 16 * n
    assert w.by_format["bfloat16 scales"] == 2 * groups
    asym = json.loads(json.dumps(w4))
    asym["config_groups"]["group_0"]["weights"]["symmetric"] = False
    zeros = weight_bytes(_tiny(_q(**asym))).by_format["int32 zeros"]
    assert zeros == sum(t.copies * 4 * math.ceil(t.shape[0] * 4 / 32) * math.ceil(t.shape[1] / 128) for t in lin)
    fp8 = {"quant_method": "compressed-tensors", "format": "float-quantized", "ignore": ["lm_head", "re:.*mlp.gate$"],
           "config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "float",
                                                                    "strategy": "channel"},
                                   "input_activations": {"num_bits": 8, "type": "float", "dynamic": True}}}}
    f = weight_bytes(_tiny(_q(**fp8)))
    router = 4 * 256
    assert f.by_format["float8_e4m3fn"] == numel - router
    assert f.by_format["bfloat16 scales"] == 2 * sum(t.copies * t.shape[0] for t in lin if ".mlp.gate." not in t.name)
    assert decode_step(_tiny(_q(**fp8)), "h100").compute == "float8"


@pytest.mark.parametrize("q,fragment", [
    ({"quant_method": "bitsandbytes"}, "quant_method 'bitsandbytes' is a scheme whatruns does not read"),
    ({"quant_method": "fp_8"}, "did you mean 'fp8'"),
    ({"bits": 4}, "no quant_method"),
    ({"quant_method": "modelopt", "quant_algo": "MIXED_PRECISION"}, "quant_algo 'MIXED_PRECISION' is not modelled"),
    ({"quant_method": "fp8", "fmt": "e3m4"}, "fmt"),
    ({"quant_method": "gptq", "bits": 5}, "bits 5 is not modelled"),
    ({"quant_method": "compressed-tensors", "config_groups": {}}, "config_groups"),
    ({"quant_method": "compressed-tensors", "format": "marlin-24", "config_groups": {"g": {"targets": ["Linear"],
                                                                                         "weights": {}}}},
     "format 'marlin-24' is not modelled"),
])
def test_unknown_schemes_are_one_clear_error(q, fragment):
    with pytest.raises(SpecError, match=fragment.replace("(", r"\(")) as e:
        weight_bytes(_tiny(_q(**q)))
    assert "\n" not in str(e.value)


def test_no_dtype_is_an_error_not_a_guess():
    gpt2 = load("tests/configs/gpt2.json")  # its config names no torch_dtype
    with pytest.raises(SpecError, match="names no torch_dtype"):
        weight_bytes(gpt2)
    assert weight_bytes(gpt2, "float32").total == 4 * count(gpt2).total_params
    with pytest.raises(SpecError, match="unknown weight dtype"):
        weight_bytes(gpt2, "float13")


# ------------------------------------------------------------------------------------------ decode and prefill


def test_accelerator_table_has_sources():
    assert {"h100", "h200", "b200", "mi300x"} <= set(ACCELERATORS)
    for a in ACCELERATORS.values():
        assert a.sources and all(len(s) > 40 for s in a.sources)
        assert set(a.peak) == {"bfloat16", "float8"}
        assert a.peak["float8"] == pytest.approx(2 * a.peak["bfloat16"], rel=1e-4)
        assert 5e10 < a.memory < 3e11 and 1e12 < a.bandwidth < 1e13
    assert accelerator("H100") is accelerator("h100-sxm") is ACCELERATORS["h100"]
    with pytest.raises(SpecError, match=r"unknown hardware 'h1000' \(did you mean 'h100'"):
        accelerator("h1000")


def test_decode_at_batch_one_reads_the_weights_it_uses():
    s = catalog.spec("mixtral-8x7b")
    st1 = decode_step(s, "h100", batch=1, context=T)
    w = weight_bytes(s)
    experts = w.where(lambda t: t.expert)
    embedding = w.where(lambda t: t.role == "embedding")
    # one token reads k = 2 of each layer's 8 experts and one row of the embedding
    assert st1.weight_bytes == pytest.approx(w.total - experts - embedding + experts * 2 / 8 + embedding / 32000)
    assert st1.kv_bytes == kv_cache_bytes(s, T).total
    assert st1.bound == "memory" and st1.time == st1.memory_time == st1.bytes / 3.35e12
    assert st1.flops == decode_flops(s, T)
    # a large batch reaches every expert: all the weights, but for the embedding rows
    big = decode_step(s, "h100", batch=512, context=T)
    assert big.weight_bytes == pytest.approx(w.total - embedding * (1 - 512 / 32000), rel=1e-9)


def test_decode_flops_count_the_keys_the_last_token_sees():
    s = catalog.spec("gpt-oss-120b")
    a = 2 * 64 * (64 + 64)  # scores and values per key, 64 heads of 64
    # 18 full layers see all T keys, 18 windowed layers 128
    assert decode_flops(s, T) - decode_flops(s, 1000) == 18 * a * (T - 1000)
    d = catalog.spec("deepseek-v3")
    latent = 2 * 128 * (2 * 512 + 64)  # absorbed MLA: scores over 512 + 64, values over 512, 128 heads
    assert decode_flops(d, T) - decode_flops(d, 1000) == 61 * latent * (T - 1000)
    expanded = 2 * 128 * (192 + 128)
    assert decode_flops(d, T, "expanded") - decode_flops(d, 1000, "expanded") == 61 * expanded * (T - 1000)


@SETTINGS
@given(spec=hybrids(), T_=st.integers(1, 40))
def test_decode_flops_over_a_sequence_add_up_to_a_causal_forward_pass(spec, T_):
    """Decoding tokens 1..T one by one does the work of one causal pass over T tokens, layer kind by layer kind
    (windows, chunks, indexers, recurrent layers, per-layer inputs): the same formulas, read per position."""
    if not spec.blocks:
        return
    total = sum(decode_flops(spec, t, mla="expanded") for t in range(1, T_ + 1))
    assert total == pytest.approx(T_ * count(spec, T_, causal=True).flops_per_token, rel=1e-12)


@pytest.mark.parametrize("name", ["mixtral-8x7b", "gpt-oss-120b", "deepseek-v3", "qwen3-235b-a22b"])
def test_decode_flops_of_catalog_models_add_up_to_a_causal_pass(name):
    s = catalog.spec(name)
    total = sum(decode_flops(s, t, mla="expanded") for t in range(1, 301))
    assert total == pytest.approx(300 * count(s, 300, causal=True).flops_per_token, rel=1e-12)


def test_moe_advantage_shrinks_as_the_batch_touches_experts():
    moe = catalog.spec("mixtral-8x7b")
    active = count(moe).active_params
    dense = Transformer(vocab=moe.vocab, width=moe.width, layers=moe.layers, attention=moe.attention,
                        ffn=FFN(2 * moe.moe.expert.width), storage=moe.storage)
    assert abs(count(dense).active_params / active - 1) < 0.01  # equal active parameters
    # at a short context, where the weights dominate the bytes: the MoE starts as fast as the dense model
    # of its active size and slows towards one of its total size as a batch reaches all 8 experts
    big = dense.with_(ffn=FFN(8 * moe.moe.expert.width))
    ratio = [decode_step(dense, "h200", B, 128).time / decode_step(moe, "h200", B, 128).time for B in (1, 2, 4, 16)]
    assert ratio[0] > 0.99 and ratio == sorted(ratio, reverse=True)
    assert decode_step(moe, "h200", 16, 128).time == pytest.approx(decode_step(big, "h200", 16, 128).time, rel=0.01)


def test_prefill_is_compute_bound_and_decode_memory_bound():
    s = catalog.spec("qwen3-235b-a22b")
    p = prefill(s, "h200", batch=1, prompt=T, devices=8)
    assert p.bound == "compute" and p.flops == T * count(s, T, causal=True).flops_per_token
    assert p.weight_bytes == pytest.approx(weight_bytes(s).total - weight_bytes(s).where(
        lambda t: t.role == "embedding") * (1 - T / s.vocab))
    d = decode_step(s, "h200", batch=1, context=T, devices=8)
    assert d.bound == "memory" and p.tokens_per_second > 100 * d.tokens_per_second


def test_fp8_checkpoints_compute_in_fp8():
    assert decode_step(catalog.spec("deepseek-v3"), "h200", devices=8).compute == "float8"
    assert decode_step(catalog.spec("gpt-oss-120b"), "h100").compute == "bfloat16"  # MXFP4 is weight-only


def test_weight_bytes_read_is_what_a_decode_step_reads():
    for name in ("mixtral-8x7b", "gpt-oss-120b", "deepseek-v3"):
        s = catalog.spec(name)
        for B in (1, 16):
            assert weight_bytes_read(s, B) == decode_step(s, "h200", batch=B, context=64).weight_bytes
    # gpt-oss: one token reads 4 of 128 experts per layer, MXFP4 blocks and scales as stored
    s = catalog.spec("gpt-oss-120b")
    wb = weight_bytes(s)
    experts = wb.where(lambda t: t.expert)
    assert weight_bytes_read(s, 1) == pytest.approx(wb.total - experts * (1 - 4 / 128)
                                                    - wb.where(lambda t: t.role == "embedding") * (1 - 1 / s.vocab))
    with pytest.raises(SpecError, match="tokens must be"):
        weight_bytes_read(s, 0)


def test_a_machine_of_ones_own_prices_its_own_dtype():
    """An Accelerator built from measurements (chapter 9 measures this CPU in fp32) prices the arithmetic at the
    dtype asked for, and a dtype it has no peak for is one clear error, not a KeyError."""
    from whatruns.serve import Accelerator
    cpu = Accelerator("cpu", "this CPU", 24 * 2 ** 30, 10e9, {"float32": 20e9}, ("measured",))
    s = catalog.spec("mixtral-8x7b").with_(storage=Storage("float32"))
    d = decode_step(s, cpu, batch=1, context=64, compute="float32")
    assert d.compute == "float32" and d.time == max(d.flops / 20e9, d.bytes / 10e9) and d.bound == "memory"
    assert cpu.ridge == 2.0
    with pytest.raises(SpecError, match="compute 'bfloat16': this CPU has a peak for 'float32' only"):
        decode_step(s, cpu, batch=1, context=64)
    with pytest.raises(SpecError, match="compute 'float16': H100 SXM has a peak for 'bfloat16', 'float8' only"):
        decode_step(s, "h100", compute="float16")


def test_what_fits():
    s = catalog.spec("gpt-oss-120b")
    b = max_batch(s, "h100", T)
    assert memory_needed(s, b, T) <= 80e9 < memory_needed(s, b + 1, T)
    n = max_context(s, "h100", batch=8)
    assert memory_needed(s, 8, n) <= 80e9 < memory_needed(s, 8, n + 1)
    assert check_fits(s, "h100", b, T) == memory_needed(s, b, T)
    with pytest.raises(SpecError, match=f"at most {b:,} sequences fit"):
        check_fits(s, "h100", b + 1, T)
    with pytest.raises(SpecError, match="the weights alone are 673 GB.*at least 9"):
        check_fits(catalog.spec("deepseek-v3"), "h100", 1, T)
    assert max_batch(catalog.spec("deepseek-v3"), "h200", T) == 0
    assert max_batch(catalog.spec("deepseek-v3"), "h200", T, devices=8) > 0
    # a model whose state does not grow with the context fits at any length
    flat = Transformer(vocab=100, width=64, blocks=[Run(Block(LinearAttention(4, 2, 16, 8), FFN(64)), 4)],
                       storage=Storage("bfloat16"))
    assert max_context(flat, "h100") is None


def test_devices_needed_and_kv_crossover():
    d = catalog.spec("deepseek-v3")
    n = devices_needed(d, "h200", batch=16, context=T)
    assert (n - 1) * 141e9 < memory_needed(d, 16, T) <= n * 141e9
    assert max_batch(d, "h200", T, devices=n) >= 16 > max_batch(d, "h200", T, devices=n - 1)
    m = catalog.spec("mixtral-8x7b")  # dense-like at large batches: every expert read
    b = kv_crossover(m, T)
    for B, cache_wins in ((b - 1, False), (b, True)):
        st = decode_step(m, "h200", B, T)
        assert (st.kv_bytes >= st.weight_bytes) == cache_wins
    assert abs(b - weight_bytes(m).total / kv_cache_bytes(m, T).total) < 1  # 93.4 GB / 537 MB a sequence
    # an MoE's weight side grows with the batch: at a long context the cache wins while few experts are read
    g = catalog.spec("gpt-oss-120b")
    b = kv_crossover(g, 32768)
    assert decode_step(g, "h100", b, 32768).weight_bytes < 0.8 * weight_bytes(g).total


# ------------------------------------------------------------------------------------------ command line


def test_count_json_has_kv_cache_and_weight_bytes(capsys):
    rc, out, err = run(capsys, "count", "gpt-oss-120b", "--json", "--seq-len", "4096", "--batch", "2",
                       "--kv-dtype", "float8")
    assert rc == 0 and err == ""
    d = json.loads(out)
    assert d["weight_bytes"]["total"] == 65_248_815_744
    assert d["kv_cache_bytes"]["total"] == kv_cache_bytes(catalog.spec("gpt-oss-120b"), 4096, 2, "float8").total
    rc, out, _ = run(capsys, "count", "gpt-oss-120b")
    assert rc == 0 and "65,248,815,744" in out and "KV cache" in out and "as stored" in out


def test_count_keeps_counting_when_the_bytes_are_unknown(capsys, tmp_path):
    cfg = dict(catalog.config("mixtral-8x7b"), quantization_config={"quant_method": "bitsandbytes"})
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    rc, out, _ = run(capsys, "count", str(tmp_path), "--json")
    d = json.loads(out)
    assert rc == 0 and d["weight_bytes"] is None and "bitsandbytes" in d["weight_bytes_unknown"]
    assert d["total_params"] == count(catalog.spec("mixtral-8x7b")).total_params
    rc, out, _ = run(capsys, "count", "dlrm-v2", "--json")
    assert rc == 0 and json.loads(out)["kv_cache_bytes"] is None


def test_serve_prints_decode_prefill_and_what_fits(capsys):
    rc, out, err = run(capsys, "serve", "gpt-oss-120b", "--hardware", "h100", "--batch", "4", "--seq-len", "2048")
    assert rc == 0 and err == ""
    step = decode_step(catalog.spec("gpt-oss-120b"), "h100", 4, 2048)
    assert "H100 SXM" in out and "decode" in out and "prefill" in out
    assert f"{step.time * 1e3:.2f} ms" in out
    assert f"{max_batch(catalog.spec('gpt-oss-120b'), 'h100', 2048):,}" in out
    rc, out, _ = run(capsys, "serve", "deepseek-v3", "--hardware", "h200", "--devices", "8", "--json")
    d = json.loads(out)
    assert rc == 0 and d["decode"]["compute"] == "float8" and d["devices"] == 8


@pytest.mark.parametrize("argv,fragments", [
    (("serve", "gpt-oss-120b", "--hardware", "h1000"), ("unknown hardware 'h1000'", "did you mean 'h100'")),
    (("serve", "deepseek-v3", "--hardware", "h100"), ("does not fit", "weights alone")),
    (("serve", "gpt-oss-120b", "--hardware", "h100", "--batch", "5000"), ("does not fit", "sequences fit")),
    (("serve", "gpt-oss-120b", "--batch", "0"), ("--batch",)),
    (("serve", "gpt2"), ()),
    (("count", "gpt-oss-120b", "--kv-dtype", "bf61"), ("unknown KV-cache dtype",)),
    (("serve", "dlrm-v2"), ("an EmbeddingModel does not decode",)),
    (("serve", "gpt3-175b", "--weight-dtype", "bfloat16", "--devices", "8", "--seq-len", "4096"),
     ("4,096 tokens are more than the model's 2,048 learned positions",)),
])
def test_serve_bad_input_is_one_line(capsys, argv, fragments):
    if argv[1] == "gpt2":
        argv = ("serve", "tests/configs/gpt2.json")
        fragments = ("names no torch_dtype", "--weight-dtype")
    assert_one_line_error(*run(capsys, *argv), *fragments)


def test_serve_bad_input_in_a_real_process():
    p = subprocess.run([sys.executable, "-m", "whatruns", "serve", "mixtral-8x7b", "--hardware", "a100"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stdout == "" and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert "unknown hardware 'a100'" in p.stderr


def test_serve_unknown_scheme_is_one_line(capsys, tmp_path):
    cfg = dict(catalog.config("mixtral-8x7b"), quantization_config={"quant_method": "hqq"})
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(*run(capsys, "serve", str(tmp_path), "--hardware", "mi300x"),
                          "quant_method 'hqq' is a scheme whatruns does not read")
