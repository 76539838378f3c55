"""Helpers of the chapter "Real models, counted" (book/05_real_models.ipynb): published figures compared at
the precision printed (``catalog.Figure.agrees``), an encoder-decoder's FLOPs per sequence
(``count.encoder_decoder_flops``), and MoE layers counted on the meta device (``nn.MoELayer._on_meta``)."""

from __future__ import annotations

import pytest
import torch

import whatruns
from whatruns import FFN, MoE, Attention, SpecError, Transformer, catalog, count
from whatruns.count import encoder_decoder_flops
from whatruns.measure import count_flops


# ------------------------------------------------------------------------------------------ Figure.agrees

def test_digits_as_printed():
    fig = lambda text: catalog.Figure(1.0, "parameters", text, "test")  # noqa: E731
    assert [fig(t).digits for t in ("46.7B", "175.0B", "12,850", "7B", "400B", "3.14E+23", "~36T", "0.96B")] == \
        [3, 4, 4, 1, 1, 3, 2, 2]
    assert fig("= total parameters").digits is None
    with pytest.raises(SpecError):
        fig("= total parameters").agrees(1.0)


def test_agrees_at_the_precision_printed():
    f = catalog.Figure(46.7e9, "parameters", "46.7B", "test")
    assert f.agrees(46_702_792_704) and f.agrees(46.66e9) and not f.agrees(46.64e9)
    assert not f.agrees(46_802_792_704)
    assert f.agrees(46.9e9, digits=2) and not f.agrees(46.9e9)
    d1 = catalog.entry("gpt3-13b").published["params_d1"]
    assert d1.digits == 4 and not d1.agrees(12_952_938_780) and d1.agrees(12_853_000_000)
    assert catalog.entry("llama4-maverick").published["total_params"].agrees(400.7e9)  # '400B': one figure


# ------------------------------------------------------------------------------------------ encoder_decoder_flops

def _small_switch(**changes):
    base = dict(vocab=50, width=16, layers=3, encoder_layers=4, attention=Attention(heads=2, kv_heads=2, head_dim=8),
                ffn=FFN(24, gated=False, activation="relu"),
                moe=MoE(experts=4, top_k=1, expert=FFN(24, gated=False, activation="relu")),
                moe_layers=(1,), encoder_moe_layers=(1, 3), tied=True, relative_buckets=8)
    return Transformer(**{**base, **changes})


@pytest.mark.parametrize("spec", [
    _small_switch(),
    _small_switch(moe=MoE(experts=4, top_k=2, expert=FFN(8), shared=FFN(12), shared_experts=1, shared_gate=True)),
    catalog.spec("switch-c-2048"), catalog.spec("switch-c-2048", "paper"), catalog.spec("switch-xxl"),
])
def test_encoder_decoder_flops_add_up_to_count(spec):
    for T in (1, 5, 512):
        parts = encoder_decoder_flops(spec, T, T, causal=False)
        assert set(parts) == {"encoder", "decoder", "router", "head"}
        assert sum(parts.values()) == count(spec, seq_len=T).flops_per_token * T


def test_encoder_decoder_flops_lengths():
    s = _small_switch()
    a, b = encoder_decoder_flops(s, 10, 3), encoder_decoder_flops(s, 20, 3)
    assert a["head"] == b["head"] == 2 * 3 * s.width * s.vocab  # the head runs on the targets only
    assert b["encoder"] > 2 * a["encoder"]  # more tokens, each seeing more keys
    assert b["decoder"] > a["decoder"]  # cross-attention reads every input
    causal, full = encoder_decoder_flops(s, 10, 7), encoder_decoder_flops(s, 10, 7, causal=False)
    assert full["decoder"] - causal["decoder"] == s.layers * 7 * 2 * s.attention.heads * (7 - 4) * 16
    with pytest.raises(SpecError):
        encoder_decoder_flops(catalog.spec("mixtral-8x7b"), 4, 4)
    with pytest.raises(SpecError):
        encoder_decoder_flops(s, 0, 4)


def test_switch_table_9_flops_per_sequence():
    """Table 9's FLOPs per sequence: encoder + decoder for T5's 512 input and 114 target tokens, the
    LM head and the routers left out, reproduce all three Switch models to 1%."""
    for name, variant in (("switch-base-128", None), ("switch-xxl", None), ("switch-c-2048", "paper")):
        p = encoder_decoder_flops(catalog.spec(name, variant), 512, 114)
        printed = catalog.entry(name).published["flops_per_sequence"].value
        assert abs((p["encoder"] + p["decoder"]) / printed - 1) < 0.01, name


# ------------------------------------------------------------------------------------------ MoE on meta

def _specs():
    mixtral_like = Transformer(vocab=40, width=16, layers=2, attention=Attention(heads=4, kv_heads=2, head_dim=4),
                               moe=MoE(experts=4, top_k=2, expert=FFN(8), router="topk_softmax"), moe_layers=(0, 1))
    deepseek_like = Transformer(
        vocab=40, width=16, layers=3,
        attention=Attention(heads=2, kv_heads=2, head_dim=6, v_head_dim=4, q_lora_rank=8, kv_lora_rank=4,
                            rope_head_dim=2),
        ffn=FFN(20), moe=MoE(experts=8, top_k=3, expert=FFN(4), shared=FFN(8), shared_experts=2,
                             score_bias=True, router="sigmoid_topk"),
        moe_layers=(1, 2))
    return [mixtral_like, deepseek_like, _small_switch()]


@pytest.mark.parametrize("spec", _specs())
@pytest.mark.parametrize("T", [3, 8])  # N*k a multiple of E, and not
def test_meta_flops_are_the_flops_of_a_real_forward_pass(spec, T):
    ids = torch.randint(0, spec.vocab, (2, T), generator=torch.Generator().manual_seed(0))
    real = count_flops(whatruns.build(spec, moe_strategy="loop"), ids)
    with torch.device("meta"):  # the strategy does not matter on meta (no values to route by)
        model = whatruns.build(spec, moe_strategy="loop")
        meta = count_flops(model, ids.to("meta"))
    assert sum(p.numel() for p in model.parameters()) == count(spec).total_params
    assert meta == real == count(spec, seq_len=T).flops_per_token * 2 * T
