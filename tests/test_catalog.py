"""The catalog: every published figure against the count of the published config.

Each test recomputes a number from a config (``catalog.spec`` then ``count``) and compares it with the
figure its authors printed (``catalog.entry(name).published``), at the precision they printed it, or
with a stated tolerance and the reason for the gap. Nothing here is typed in but the published
figures themselves, which live, with their sources, in ``src/whatruns/catalog/*.json``.

"Agrees" below means: rounded to the significant figures printed, the count gives the printed number
(46,702,792,704 agrees with "46.7B"; 12,952,938,780 does not agree with "12,850" (M)).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import whatruns
from whatruns import SpecError, catalog, count
from whatruns.units import PF_DAY

GPT3 = [n for n in catalog.names() if n.startswith("gpt3-")]


# ------------------------------------------------------------------------------------------ helpers

def printed_digits(as_printed: str) -> int:
    """Significant figures of a printed number, as :attr:`whatruns.catalog.Figure.digits` reads them."""
    return catalog.Figure(value=0.0, unit="", as_printed=as_printed, source="").digits


def agrees(x: float, figure, digits=None) -> bool:
    """Whether ``x``, rounded to the figures printed (or to ``digits``), is the printed value."""
    return figure.agrees(x, digits)


def pub(name: str, key: str):
    return catalog.entry(name).published[key]


def counted(name: str, variant=None, seq_len: int = 2048):
    return count(catalog.spec(name, variant), seq_len=seq_len)


def input_embedding_rows_not_read(name: str, variant=None) -> int:
    """Parameters of the input embedding that one token does not read: (V - 1) x D. Publishers who
    count "the whole input embedding" as active add these to this library's active count."""
    s = catalog.spec(name, variant)
    return (s.vocab - 1) * s.width


def test_helpers():
    assert [printed_digits(p) for p in ("46.7B", "175.0B", "12,850", "7B", "400B", "3.14E+23", "~36T")] == \
        [3, 4, 4, 1, 1, 3, 2]
    f = catalog.Figure(46.7e9, "parameters", "46.7B", "test")
    assert agrees(46_702_792_704, f) and not agrees(46_802_792_704, f)


# ------------------------------------------------------------------------------------------ the API

def test_names_match_files_and_are_sorted():
    folder = Path(catalog.__file__).parent
    assert catalog.names() == sorted(p.stem for p in folder.glob("*.json"))
    assert len(catalog.names()) >= 19
    for must in ("gpt3-175b", "mixtral-8x7b", "deepseek-v3", "qwen3-235b-a22b", "gpt-oss-120b",
                 "llama4-maverick", "dbrx", "switch-c-2048", "switch-xxl", "switch-base-128",
                 "glam-64b-64e", "gshard-600b", "dlrm-v2"):
        assert must in catalog.names()


def test_every_entry_is_complete():
    for name, e in catalog.entries().items():
        assert e.name == name and e.title and e.kind and e.source and e.notes
        assert e.published, name
        for key, fig in e.published.items():
            assert fig.value > 0 and fig.unit and fig.as_printed and fig.source, (name, key)
        if e.is_hf:
            assert "model_type" in e.config, name
        else:
            assert e.config["whatruns"] in ("transformer", "embedding_model"), name
        if e.table_variant is not None:
            assert e.table_variant in e.variants, name
        for label, v in e.variants.items():
            assert v.note, (name, label)


def test_every_config_and_variant_counts():
    for name, e in catalog.entries().items():
        for variant in (None, *e.variants):
            c = counted(name, variant)
            assert 0 < c.active_params <= c.total_params, (name, variant)
            assert c.flops_per_token > 0, (name, variant)


def test_config_is_a_fresh_copy_and_names_are_case_insensitive():
    a = catalog.config("Mixtral-8x7B")
    a["hidden_size"] = 1
    assert catalog.config("mixtral-8x7b")["hidden_size"] == 4096


def test_unknown_name_is_one_line_naming_close_matches():
    with pytest.raises(SpecError) as err:
        catalog.config("mixtral-8x7")
    msg = str(err.value)
    assert "\n" not in msg and "mixtral-8x7b" in msg
    with pytest.raises(SpecError) as err:
        catalog.entry("zzzzzz")
    assert "known:" in str(err.value)
    with pytest.raises(SpecError):
        catalog.entry("gpt3-13b").spec("no-such-variant")
    with pytest.raises(SpecError):
        catalog.entry(3)


def test_load_by_name_is_the_catalog_spec():
    for name in ("mixtral-8x7b", "glam-64b-64e", "dlrm-v2", "gpt3-small"):
        assert whatruns.load(name) == catalog.spec(name)


def test_table():
    rows = catalog.table(seq_len=1024)
    assert [r.name for r in rows] == catalog.names()
    by = {r.name: r for r in rows}
    for r in rows:
        assert 0 < r.active_fraction <= 1
        assert r.active_params == counted(r.name, catalog.entry(r.name).table_variant, 1024).active_params
        json.dumps(r.as_dict())
    # Switch-C is counted as published (Table 9), not as its Hugging Face config loads
    assert by["switch-c-2048"].basis == "paper"
    assert agrees(by["switch-c-2048"].total_params, pub("switch-c-2048", "total_params"))
    assert by["gpt3-175b"].active_fraction > 0.99 > 0.06 > by["deepseek-v3"].active_fraction
    assert by["dlrm-v2"].published_total is None


# ------------------------------------------------------------------------------------------ GPT-3

@pytest.mark.parametrize("name", GPT3)
def test_gpt3_total_agrees_with_table_d1(name):
    """Table D.1 prints parameters in millions to 3-4 figures; the GPT-2-style count (tied embeddings,
    a 2048 x d_model position table, biases, LayerNorms) reproduces every one of them."""
    assert agrees(counted(name).total_params, pub(name, "params_d1"))


@pytest.mark.parametrize("name", GPT3)
def test_gpt3_total_within_2_percent_of_table_2_1(name):
    """Table 2.1's n_params are the models' names, rounded further than Table D.1: 'GPT-3 Medium 350M'
    counts 355.9M (D.1: 356M), '2.7B' counts 2.65B (D.1: 2,650M). Gaps up to 1.8%."""
    n = counted(name).total_params
    assert abs(n / pub(name, "total_params").value - 1) < 0.02


@pytest.mark.parametrize("name", GPT3)
def test_gpt3_active_is_all_but_the_unread_position_rows(name):
    """Table D.1: 'Frac of params active for each token' 1.0. Here every parameter runs except the rows of
    the 2048 x d_model position table at other positions (each token reads one row); the tied embedding
    is the LM head, so all of it runs."""
    s, c = catalog.spec(name), counted(name)
    assert s.tied and s.positions == 2048
    assert c.active_params == c.total_params - (s.positions - 1) * s.width
    assert c.active_fraction > 0.98


@pytest.mark.parametrize("name", GPT3)
def test_gpt3_training_compute(name):
    """Table D.1: compute = 6 FLOPs per parameter per token x 300B tokens; PF-days = FLOPs / 8.64e19.

    D.1 is consistent with itself: its rounded params times 6 x 300B give its FLOPs and PF-days to the
    figures printed. From the exact counts the gap is at most 0.5%, all of it D.1's rounding: XL's 1,315.7M
    parameters enter as 1,320M (+0.32%) and the FLOPs are printed to 3 figures (up to 0.2%)."""
    assert PF_DAY == 8.64e19
    tokens = pub(name, "training_tokens").value
    assert tokens == 300e9
    flops_d1 = 6 * pub(name, "params_d1").value * tokens
    assert agrees(flops_d1, pub(name, "training_flops"))
    assert agrees(flops_d1 / PF_DAY, pub(name, "training_pf_days"))

    flops = 6 * counted(name).total_params * tokens
    assert abs(flops / pub(name, "training_flops").value - 1) < 0.005
    assert abs(flops / PF_DAY / pub(name, "training_pf_days").value - 1) < 0.005
    # training FLOPs per token, as count() gives them, are 3 x forward: at least 6 N (attention adds more)
    assert counted(name).training_flops_per_token >= 6 * counted(name).active_params


def test_gpt3_175b_training_compute_headline():
    """The headline figures: 3.14e23 FLOPs, 3,640 PF-days."""
    flops = 6 * counted("gpt3-175b").total_params * 300e9
    assert agrees(flops, pub("gpt3-175b", "training_flops"))
    assert agrees(flops / PF_DAY, pub("gpt3-175b", "training_pf_days"))


def test_gpt3_13b_d_model_typo():
    """Table 2.1 prints d_model 5140 for GPT-3 13B. With 5140 the count (12,953M) is further from Table D.1's
    12,850M than with 5120 (12,853M), and only 5120 agrees with it; 5140 is not divisible by 40 heads either."""
    d1 = pub("gpt3-13b", "params_d1")
    right = counted("gpt3-13b").total_params
    typo = counted("gpt3-13b", "table-2.1-typo").total_params
    assert catalog.spec("gpt3-13b").width == 5120
    assert catalog.spec("gpt3-13b", "table-2.1-typo").width == pub("gpt3-13b", "d_model_printed").value == 5140
    assert abs(typo - d1.value) > 30 * abs(right - d1.value)
    assert agrees(right, d1) and not agrees(typo, d1)
    assert 5140 % 40 and not 5120 % 40


def test_gpt3_175b_forward_flops():
    """GLaM's comparison puts GPT-3 at 350 GFLOPs per token: 2 FLOPs per parameter (349.2G)."""
    assert agrees(2 * counted("gpt3-175b").total_params, pub("gpt3-175b", "forward_flops_per_token"))


# ------------------------------------------------------------------------------------------ Mixtral

def test_mixtral():
    """46.7B total agrees. Active: 12.75B here (one embedding row per token) does not agree with Mistral's
    12.9B; adding the rest of the input embedding (31,999 x 4,096 = 131M) does: Mistral counts the whole
    input embedding as active."""
    c = counted("mixtral-8x7b")
    assert agrees(c.total_params, pub("mixtral-8x7b", "total_params"))
    assert agrees(c.total_params, pub("mixtral-8x7b", "total_params_paper"))
    assert not agrees(c.active_params, pub("mixtral-8x7b", "active_params"))
    whole = c.active_params + input_embedding_rows_not_read("mixtral-8x7b")
    assert agrees(whole, pub("mixtral-8x7b", "active_params"))
    assert agrees(whole, pub("mixtral-8x7b", "active_params_paper"))


# ------------------------------------------------------------------------------------------ DeepSeek-V3

def test_deepseek_v3():
    """671B agrees: the main model, without the multi-token-prediction module (which transformers does not
    build). 37B active: 36.63B here (one embedding row) and 37.55B with the whole input embedding; both are
    within 1.5% of the paper's two-figure 37B.

    README_WEIGHTS.md gives 36.7B 'including 0.9B for Embedding and 0.9B for the output Head'; the same
    convention counts 37.55B here, 0.85B (2.3%) more. That gap is not explained by any convention tried
    (the MLA projections, the 3 dense layers and the shared expert all count as in the paper's Table)."""
    c = counted("deepseek-v3")
    assert agrees(c.total_params, pub("deepseek-v3", "total_params"))
    assert not agrees(c.total_params, pub("deepseek-v3", "total_params_hf"))  # 685B includes MTP (14B)
    whole = c.active_params + input_embedding_rows_not_read("deepseek-v3")
    for active in (c.active_params, whole):
        assert abs(active / pub("deepseek-v3", "active_params").value - 1) < 0.015
    gap = whole - pub("deepseek-v3", "active_params_weights_readme").value
    assert 0.8e9 < gap < 0.9e9
    s = catalog.spec("deepseek-v3")
    assert s.vocab * s.width / 1e9 == pytest.approx(0.9, abs=0.05)  # the README's "0.9B" embedding and head


# ------------------------------------------------------------------------------------------ Qwen3

def test_qwen3():
    """235B total agrees. The card's non-embedding 234B leaves out the input embedding and the untied head
    (233.85B here); leaving out the embedding alone (234.47B) also rounds to 234B, so the figure cannot tell
    the two apart at three figures. 22B active: 21.57B here, 22.19B with the whole input embedding; both
    agree at two figures."""
    c = counted("qwen3-235b-a22b")
    assert agrees(c.total_params, pub("qwen3-235b-a22b", "total_params"))
    assert agrees(c.non_embedding_params, pub("qwen3-235b-a22b", "non_embedding_params"))
    assert c.breakdown["head"].params > 0  # untied: the head is in embedding_params
    assert agrees(c.total_params - c.breakdown["embedding"].params, pub("qwen3-235b-a22b", "non_embedding_params"))
    assert agrees(c.active_params, pub("qwen3-235b-a22b", "active_params"))
    assert agrees(c.active_params + input_embedding_rows_not_read("qwen3-235b-a22b"),
                  pub("qwen3-235b-a22b", "active_params"))


# ------------------------------------------------------------------------------------------ gpt-oss

def test_gpt_oss_120b():
    """Every figure of the model card's Table 1 agrees, to the figures printed: 116.83B total; MLP 114.71B
    (experts and routers); attention 0.96B (with the sinks); embed + unembed 1.16B; and 5.13B active, which
    counts the unembedding but not the embedding, this library's convention: with the whole input
    embedding it would be 5.71B."""
    c = counted("gpt-oss-120b")
    b = c.breakdown
    assert agrees(c.total_params, pub("gpt-oss-120b", "total_params"))
    assert agrees(b["routed_experts"].params + b["router"].params, pub("gpt-oss-120b", "mlp_params"))
    assert agrees(b["attention"].params, pub("gpt-oss-120b", "attention_params"))
    assert agrees(c.embedding_params, pub("gpt-oss-120b", "embedding_params"))
    assert agrees(c.active_params, pub("gpt-oss-120b", "active_params"))
    assert not agrees(c.active_params + input_embedding_rows_not_read("gpt-oss-120b"), pub("gpt-oss-120b", "active_params"))


# ------------------------------------------------------------------------------------------ Llama 4

def test_llama4_maverick():
    """The text model alone counts 400.71B: the card's 400B (0.18% below), so the card's total does not need
    the vision tower. 17B active: 16.15B here does not agree; with the whole input embedding (1.03B) it is
    17.18B, which does: Meta counts the input embedding as active."""
    c = counted("llama4-maverick")
    assert abs(c.total_params / pub("llama4-maverick", "total_params").value - 1) < 0.005
    assert not agrees(c.active_params, pub("llama4-maverick", "active_params"))
    assert agrees(c.active_params + input_embedding_rows_not_read("llama4-maverick"),
                  pub("llama4-maverick", "active_params"))
    s = catalog.spec("llama4-maverick")
    assert s.moe_layers == tuple(range(1, 48, 2)) and s.moe.top_k == 1 and s.moe.shared is not None


# ------------------------------------------------------------------------------------------ DBRX

def test_dbrx():
    """132B total and 36B active agree; whether DBRX's 36B counts the input embedding is not said, and at
    two figures it makes no difference (35.85B without, 36.47B with)."""
    c = counted("dbrx")
    assert agrees(c.total_params, pub("dbrx", "total_params"))
    assert agrees(c.active_params, pub("dbrx", "active_params"))
    assert agrees(c.active_params + input_embedding_rows_not_read("dbrx"), pub("dbrx", "active_params"))


# ------------------------------------------------------------------------------------------ Switch

def test_switch_c():
    """Table 9: 1571B. The paper's sizes (variant 'paper': 15 + 15 layers, 2048 experts in every FFN)
    agree to four figures. The Hugging Face config loads as a model of 786B, half of it: num_decoder_layers
    12 with num_sparse_decoder_layers 15 makes transformers' decoder_sparse_step 12 // 15 = 0, so the
    decoder gets no experts (and num_heads is 30, not 32)."""
    paper = counted("switch-c-2048", "paper")
    hf = counted("switch-c-2048")
    assert agrees(paper.total_params, pub("switch-c-2048", "total_params"))
    cfg = catalog.config("switch-c-2048")
    assert cfg["num_decoder_layers"] // cfg["num_sparse_decoder_layers"] == 0
    hf_spec = catalog.spec("switch-c-2048")
    assert hf_spec.moe_layers == () and len(hf_spec.encoder_moe_layers) == 15
    assert 0.45 < hf.total_params / paper.total_params < 0.55
    assert paper.active_fraction < 0.0015  # top-1 of 2048 experts


def test_switch_xxl_expert_count():
    """Table 9: 395B. 128 experts on every other FFN layer (the released checkpoint is google/switch-xxl-128)
    agree; the 64 experts Table 9 prints give 201B."""
    assert agrees(counted("switch-xxl").total_params, pub("switch-xxl", "total_params"))
    half = counted("switch-xxl", "64-experts").total_params / counted("switch-xxl").total_params
    assert 0.50 < half < 0.52  # the experts are 98% of the model
    assert not agrees(counted("switch-xxl", "64-experts").total_params, pub("switch-xxl", "total_params"))


def test_switch_base():
    """Table 9: 7B (one figure); the released config counts 7.42B."""
    assert agrees(counted("switch-base-128").total_params, pub("switch-base-128", "total_params"))


def test_switch_c_vs_switch_xxl():
    """Switch-C stores about 4x Switch-XXL's parameters (1571B / 395B) and runs about 1/7 of its FLOPs
    (Table 9: 890B / 6.3T = 0.141 per sequence). Per token at T = 512 the ratio here is 0.161: Table 9
    states neither its sequence length nor its counting convention, and Switch-C's attention (narrow
    d_model, same head count) weighs more at longer sequences (0.157 at T = 1, 0.172 at T = 2048)."""
    c, x = counted("switch-c-2048", "paper", 512), counted("switch-xxl", seq_len=512)
    stored = pub("switch-c-2048", "total_params").value / pub("switch-xxl", "total_params").value
    assert abs((c.total_params / x.total_params) / stored - 1) < 0.01
    published = pub("switch-c-2048", "flops_per_sequence").value / pub("switch-xxl", "flops_per_sequence").value
    ratio = c.flops_per_token / x.flops_per_token
    assert 1 < ratio / published < 1.2
    assert c.total_params > 3.9 * x.total_params and ratio < 1 / 6


def test_gshard():
    """Table 1: MoE(2048E, 36L), 600B weights. 36 layers of encoder and decoder together (18 + 18), an MoE layer of
    2048 experts in every other one: 18 x 2048 = 36,864 experts of 2 x 1024 x 8192. The count, 619B, agrees with
    the one figure printed and is 3% above it; a token runs its best two experts at most."""
    s, c = catalog.spec("gshard-600b"), counted("gshard-600b", seq_len=1024)
    assert s.layers == s.encoder_layers == 18 and len(s.moe_layers) == len(s.encoder_moe_layers) == 9
    experts = (len(s.moe_layers) + len(s.encoder_moe_layers)) * s.moe.experts
    assert experts == 36_864 == 18 * pub("gshard-600b", "experts_per_layer").value
    assert s.layers + s.encoder_layers == pub("gshard-600b", "layers").value
    assert c.breakdown["routed_experts"].params == experts * 2 * 1024 * 8192
    assert agrees(c.total_params, pub("gshard-600b", "total_params"))
    assert 1.0 < c.total_params / pub("gshard-600b", "total_params").value < 1.04
    assert s.moe.top_k == 2 and c.breakdown["routed_experts"].active == 18 * 2 * 2 * 1024 * 8192
    assert c.active_fraction < 0.003   # two of 2048 experts per MoE layer


# ------------------------------------------------------------------------------------------ GLaM

def test_glam_ffn_conventions():
    """GLaM's 1.2T total and 96.6B active fit no single FFN convention. GLU (three matrices) in the dense
    layers and plain two-matrix experts (the config) agree with both: 1.164T and 96.60B. Plain FFNs
    everywhere ('no-glu') agree with the total (1.155T) but give 88.0B active; GLU everywhere
    ('glu-experts') gives 1.71T and 113.8B, neither."""
    total, active = pub("glam-64b-64e", "total_params"), pub("glam-64b-64e", "active_params")
    mixed, plain, glu = (counted("glam-64b-64e", v) for v in (None, "no-glu", "glu-experts"))
    assert agrees(mixed.total_params, total) and agrees(mixed.active_params, active)
    assert agrees(plain.total_params, total) and not agrees(plain.active_params, active)
    assert not agrees(glu.total_params, total) and not agrees(glu.active_params, active)


def test_glam_flops_per_token():
    """GLaM's 180 GFLOPs per token (vs GPT-3's 350) is a secondary figure. Two FLOPs per active parameter
    of the config (GLU in the dense layers) give 193.2G, 7.3% more. The 'no-glu' reading (plain FFNs
    everywhere) gives 2 x 88.0B = 176G, which agrees with '180' at the two figures printed: the published
    FLOPs seem to use a different FFN convention from the published parameter counts (chapter
    "Real models, counted")."""
    fig = pub("glam-64b-64e", "flops_per_token")
    f = 2 * counted("glam-64b-64e").active_params
    assert 0.06 < f / fig.value - 1 < 0.09
    plain = 2 * count(catalog.spec("glam-64b-64e", "no-glu")).active_params
    assert agrees(plain, fig, digits=2) and not agrees(f, fig, digits=2)


# ------------------------------------------------------------------------------------------ DLRM

def test_dlrm_v2():
    """The README's embedding tables '104.54 (GiB)' are 26.14B fp32 parameters = 104.54e9 bytes: GB, not
    GiB (97.36 GiB). One example reads 214 rows (the multi-hot sizes), so of 26.1B stored parameters about
    27k embedding parameters and the MLPs (2.2M) run for it."""
    c = counted("dlrm-v2")
    s = catalog.spec("dlrm-v2")
    fig = pub("dlrm-v2", "embedding_bytes")
    fp32 = 4 * c.embedding_params
    assert agrees(fp32, fig)
    assert not agrees(fp32 / 2**30 * 1e9, fig)  # read as GiB, the tables would be 112.2e9 bytes
    assert len(s.tables) == 26 and {t.dim for t in s.tables} == {128}
    rows_read = sum(t.pooling for t in s.tables)
    assert rows_read == 214
    assert c.breakdown["embedding"].active == rows_read * s.dim
    assert c.embedding_params / c.total_params > 0.999
    assert c.active_params < 1e-3 * c.total_params
