"""build(spec) makes a module whose parameters and measured FLOPs are exactly count(spec)'s."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from whatruns import FFN, MoE, Attention, EmbeddingModel, Norm, Table, Transformer, count
from whatruns.spec import Block, Indexer, LinearAttention, Mamba2, Run
from whatruns.count import ffn_flops
from whatruns.measure import count_flops, flop_breakdown
from whatruns.nn import STRATEGIES, MoELayer, build

torch.set_num_threads(1)  # tiny tensors: threads only add waiting (and spinning, on a busy machine)

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DROPLESS = ("grouped_mm", "loop", "threads")  # the strategies whose FLOPs are count()'s
FAMILIES = ("gpt2", "llama", "qwen3", "mla", "mla_q_lora", "gpt_oss", "qwen2_moe", "deepseek_v3", "switch_t5",
            "hybrid", "bert", "gemma4")
small = st.integers


@st.composite
def moes(draw, D_multiple=4, **fixed):
    E = draw(small(2, 6))
    f = FFN(4 * draw(small(1, 3)), gated=draw(st.booleans()), bias=draw(st.booleans()),
            activation=draw(st.sampled_from(("silu", "gelu", "gelu_tanh", "relu", "swiglu_oai"))))
    shared = draw(st.booleans())
    args = dict(experts=E, top_k=draw(small(1, E)), expert=f,
                shared=FFN(4 * draw(small(1, 3))) if shared else None, shared_experts=int(shared),
                shared_gate=shared and draw(st.booleans()), router_bias=draw(st.booleans()),
                score_bias=draw(st.booleans()), router=draw(st.sampled_from(("softmax_topk", "topk_softmax", "sigmoid_topk"))))
    args.update(fixed)
    return MoE(**args)


@st.composite
def transformers(draw, family=None):
    family = family or draw(st.sampled_from(FAMILIES))
    D, V, L = 4 * draw(small(2, 4)), draw(small(3, 40)), draw(small(1, 2))
    H = draw(st.sampled_from((1, 2, 4)))
    K = draw(st.sampled_from([k for k in (1, 2, 4) if H % k == 0]))
    dh = draw(small(2, 9))
    ffn = FFN(4 * draw(small(1, 4)))
    kw = dict(vocab=V, width=D, layers=L, tied=draw(st.booleans()), ffn=ffn, name=family)
    if family == "gpt2":
        a = Attention(H, H, dh, bias=True, out_bias=True)
        kw.update(positions=draw(small(8, 12)), norm=Norm("layernorm", bias=True),
                  ffn=FFN(ffn.width, gated=False, bias=True, activation="gelu_tanh"))
    elif family in ("llama", "qwen3"):
        a = Attention(H, K, dh, qk_norm="head" if family == "qwen3" else None)
    elif family.startswith("mla") or family == "deepseek_v3":
        r = draw(small(1, 4))
        a = Attention(H, H, r + draw(small(1, 5)), v_head_dim=draw(small(2, 6)), kv_lora_rank=draw(small(2, 6)),
                      rope_head_dim=r, q_lora_rank=draw(small(2, 6)) if family != "mla" else 0,
                      bias=draw(st.booleans()))
        if family == "deepseek_v3":
            kw.update(moe=draw(moes(router="sigmoid_topk", score_bias=True)), moe_layers=(L - 1,))
    elif family == "gpt_oss":
        a = Attention(H, K, dh, bias=True, out_bias=True, sinks=True)
        kw.update(moe=draw(moes(router="topk_softmax", router_bias=True,
                                expert=FFN(4, bias=True, activation="swiglu_oai"))),
                  moe_layers=tuple(range(L)), sliding_window=draw(small(1, 3)), sliding_layers=(0,))
    elif family == "qwen2_moe":
        a = Attention(H, K, dh, bias=True)
        kw.update(moe=draw(moes(shared=FFN(8), shared_experts=1, shared_gate=True)),
                  moe_layers=draw(st.sampled_from([(0,), tuple(range(L))])))
    elif family == "hybrid":  # a per-layer stack: every mixer kind, MoE with latent, output gate, sparse attention
        return Transformer(vocab=V, width=D, tied=kw["tied"], name=family, blocks=draw(st.lists(hybrid_blocks(D),
                                                                                                min_size=1, max_size=3)))
    elif family == "gemma4":  # per-layer embeddings, values from keys, shared keys and values, router scales
        sliding = Attention(H, K, dh, qk_norm="head", window=draw(small(1, 3)))
        full = Attention(H, K, 2 * dh, qk_norm="head", values_from_keys=draw(st.booleans()))
        moe = draw(moes()).with_(router_scale=True, shared=FFN(8), shared_experts=1) if draw(st.booleans()) else None
        ffn = moe or FFN(4 * draw(small(1, 3)))
        blocks = [Block(sliding, ffn, post_norms=True, extra_norms=3 if moe else 0),
                  Block(full, ffn, post_norms=True, extra_norms=3 if moe else 0)]
        blocks += [Block(a.with_(kv_shared=True), ffn, post_norms=True, extra_norms=3 if moe else 0)
                   for a in draw(st.lists(st.sampled_from((sliding, full)), max_size=2))]
        P = draw(small(0, 3))
        return Transformer(vocab=V, width=D, blocks=blocks, tied=True, per_layer_input=P,
                           per_layer_vocab=V + draw(small(0, 3)) if P else 0, name=family)
    elif family == "bert":  # an encoder alone, post-norm extras: token types, embedding norm, head transform
        a = Attention(H, H, dh, bias=True, out_bias=True)
        return Transformer(vocab=V, width=D, blocks=(), encoder=[Run(Block(a, FFN(ffn.width, gated=False, bias=True,
                                                                                  activation="gelu")), L)],
                           norm=Norm("layernorm", bias=True), tied=True, positions=draw(small(8, 12)),
                           token_types=draw(small(1, 3)), embedding_norm=True, final_norm=False, head_transform=True,
                           head_bias=True, name=family)
    else:  # switch_t5: encoder-decoder, relative buckets, MoE in the encoder (and maybe the decoder)
        a = Attention(H, H, dh, v_head_dim=draw(small(2, 6)))
        enc = draw(small(1, 2))
        kw.update(relative_buckets=draw(small(2, 10)), encoder_layers=enc, encoder_moe_layers=(enc - 1,),
                  moe=draw(moes(top_k=1, router="softmax_topk")), moe_layers=draw(st.sampled_from([(), (0,)])),
                  ffn=FFN(ffn.width, gated=False, activation="relu"))
    return Transformer(attention=a, **kw)


@st.composite
def hybrid_blocks(draw, D):
    """One layer of any kind: each mixer (or none), each FFN kind (or none)."""
    kind = draw(st.sampled_from(("gqa", "gated", "chunked", "full_qk_norm", "sparse", "deltanet", "mamba2", "none")))
    H = draw(st.sampled_from((1, 2, 4)))
    dh = draw(small(2, 6))
    if kind == "gqa":
        mixer = Attention(H, draw(st.sampled_from([k for k in (1, 2) if H % k == 0])), dh,
                          window=draw(small(0, 3)))
    elif kind == "gated":
        mixer = Attention(H, H, dh, gate=draw(st.sampled_from(("channel", "head"))), qk_norm="head")
    elif kind == "chunked":
        mixer = Attention(H, H, dh, chunk=draw(small(1, 3)))
    elif kind == "full_qk_norm":
        mixer = Attention(H, H, dh, qk_norm="full")
    elif kind == "sparse":
        r = draw(small(1, 3))
        mixer = Attention(H, H, r + draw(small(1, 3)), v_head_dim=draw(small(2, 4)), kv_lora_rank=draw(small(2, 5)),
                          rope_head_dim=r, q_lora_rank=draw(small(2, 5)),
                          indexer=Indexer(draw(small(1, 3)), draw(small(1, 4)), draw(small(1, 4))))
    elif kind == "deltanet":
        Hk = draw(small(1, 2))
        mixer = LinearAttention(heads=Hk * draw(small(1, 2)), key_heads=Hk, key_dim=draw(small(1, 4)),
                                value_dim=draw(small(1, 4)), conv=draw(small(1, 4)))
    elif kind == "mamba2":
        G = draw(small(1, 2))
        mixer = Mamba2(heads=G * draw(small(1, 2)), head_dim=draw(small(1, 3)), state=draw(small(1, 4)), groups=G,
                       conv=draw(small(1, 4)), conv_bias=draw(st.booleans()), bias=draw(st.booleans()))
    else:
        mixer = None
    ffn = draw(st.sampled_from(("ffn", "moe", "latent_moe", "none" if mixer is not None else "ffn")))
    if ffn == "ffn":
        f = FFN(4 * draw(small(1, 3)), gated=draw(st.booleans()), activation=draw(st.sampled_from(("silu", "relu2"))))
    elif ffn == "none":
        f = None
    else:
        m = draw(moes())
        f = m.with_(latent=4 * draw(small(1, 2)), latent_bias=draw(st.booleans())) if ffn == "latent_moe" else m
    return Block(mixer, f, post_norms=draw(st.booleans()))


def nparams(model):
    return sum(p.numel() for p in model.parameters())


def moe_flops_per_token(s):
    """count()'s routed-expert FLOPs per token, and the number of MoE layers."""
    n = len(s.moe_layers) + len(s.encoder_moe_layers)
    return n * s.moe.top_k * ffn_flops(s.width, s.moe.expert) if s.moe else 0, n


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), B=small(1, 2), T=small(1, 6), seed=small(0, 3))
def test_transformer_params_and_flops_equal_count(family, data, B, T, seed):
    spec = data.draw(transformers(family=family))
    c = count(spec, seq_len=T)
    ids = torch.randint(0, spec.vocab, (B, T), generator=torch.Generator().manual_seed(seed))
    for strategy in DROPLESS:
        model = build(spec, seed=seed, moe_strategy=strategy)
        assert nparams(model) == c.total_params
        assert count_flops(model, ids) == c.flops_per_token * B * T, strategy
        assert model(ids).shape == (B, T, spec.vocab)
    if spec.is_moe and family != "hybrid":  # every expert on every token: E/k times the routed work
        routed = c.breakdown["routed_experts"].flops * B * T
        dense = count_flops(build(spec, seed=seed, moe_strategy="dense"), ids) - (c.flops_per_token * B * T - routed)
        assert dense * spec.moe.top_k == routed * spec.moe.experts


MOE_FAMILIES = st.sampled_from(("gpt_oss", "qwen2_moe", "deepseek_v3", "switch_t5")).flatmap(
    lambda family: transformers(family=family))


@SETTINGS
@given(spec=MOE_FAMILIES, T=small(1, 6))
def test_strategies_compute_the_same_function(spec, T):
    ids = torch.randint(0, spec.vocab, (2, T), generator=torch.Generator().manual_seed(T))
    with torch.no_grad():
        outs = {s: build(spec, seed=1, moe_strategy=s)(ids) for s in STRATEGIES}
    for s in STRATEGIES:
        torch.testing.assert_close(outs[s], outs["loop"], rtol=1e-5, atol=1e-6)


def _moe(E=4, k=2, D=8, F=8, **kw):
    return MoE(experts=E, top_k=k, expert=FFN(F), **kw)


@pytest.mark.parametrize("cf", [0.25, 0.5, 1.0, 2.0])
def test_onehot_dispatch_costs_matmul_flops_and_padding(cf):
    """GShard dispatch/combine einsums: 2*N*E*C*D FLOPs each; the experts run all E*C slots."""
    D, E, k, N = 8, 4, 2, 12
    m = _moe(E, k, D, capacity_factor=cf)
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(0))
    C = math.ceil(cf * N * k / E)

    def layer(strategy):
        torch.manual_seed(0)  # the same weights, so the same routing
        return MoELayer(D, m, strategy)

    expected = 2 * N * D * E + 2 * (2 * N * E * C * D) + E * C * ffn_flops(D, m.expert)
    assert count_flops(layer("onehot"), x) == expected
    routed = {s: count_flops(layer(s), x) - 2 * N * D * E for s in DROPLESS}
    loop = layer("loop")
    loop(x)
    kept = N * k - loop.dropped
    assert routed == {s: kept * ffn_flops(D, m.expert) for s in DROPLESS}


def test_capacity_drops_tokens_and_dropped_tokens_pass_through():
    D, E, k, N = 8, 4, 1, 16
    m = _moe(E, k, D, capacity_factor=0.5)  # capacity 2 per expert: at most 8 of 16 tokens served
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(1))
    outs = {}
    for s in STRATEGIES:
        torch.manual_seed(0)
        layer = MoELayer(D, m, s)
        with torch.no_grad():
            outs[s] = layer(x)
        assert layer.dropped >= N - E * 2
    served = outs["loop"].abs().sum(dim=1) > 0
    assert int(served.sum()) <= E * 2  # a dropped token's MoE output is 0: the residual carries it
    for s in STRATEGIES:
        torch.testing.assert_close(outs[s], outs["loop"])
    # build's option overrides the spec's (here: dropless)
    spec = Transformer(vocab=10, width=D, layers=1, attention=Attention(2, 2, 4), moe=m, moe_layers=(0,))
    model = build(spec, capacity_factor=100.0)
    model(torch.randint(0, 10, (2, 8)))
    assert model.moe_layers()[0].dropped == 0
    model = build(spec)
    model(torch.randint(0, 10, (2, 8)))
    assert model.moe_layers()[0].dropped > 0


@pytest.mark.parametrize("router", ["softmax_topk", "topk_softmax", "sigmoid_topk"])
def test_balance_loss_is_switch_loss(router):
    D, E, k, N = 8, 5, 2, 20
    torch.manual_seed(3)
    layer = MoELayer(D, _moe(E, k, D, router=router), "loop")
    x = torch.randn(N, D)
    layer(x)
    logits = layer.router(x).detach()
    scores = logits.sigmoid() if router == "sigmoid_topk" else logits.softmax(-1)
    P = (scores / scores.sum(-1, keepdim=True)).mean(0)
    f = torch.zeros(E).index_add_(0, scores.topk(k).indices.reshape(-1), torch.ones(N * k)) / (N * k)
    torch.testing.assert_close(layer.aux_loss.detach(), E * (f * P).sum())
    torch.testing.assert_close(layer.load.float(), f * N * k)
    assert layer.aux_loss.requires_grad  # it trains the router


def test_aux_loss_sums_layers_and_perfect_balance_is_one():
    spec = Transformer(vocab=10, width=8, layers=2, attention=Attention(2, 2, 4),
                       moe=_moe(E=2, k=2), moe_layers=(0, 1))  # k = E: every expert gets every token
    model = build(spec)
    model(torch.randint(0, 10, (1, 4)))
    torch.testing.assert_close(model.aux_loss(), torch.tensor(2.0))  # 1 per layer


def test_router_weights():
    D, E = 8, 6
    for router, check in [("softmax_topk", lambda w: (w.sum(-1) < 1).all()),
                          ("topk_softmax", lambda w: torch.allclose(w.sum(-1), torch.ones(len(w)))),
                          ("sigmoid_topk", lambda w: torch.allclose(w.sum(-1), torch.ones(len(w))))]:
        layer = MoELayer(D, _moe(E, 2, D, router=router), "loop")
        _, w, p = layer.route(torch.randn(7, D))
        assert check(w) and torch.allclose(p.sum(-1), torch.ones(7))


def test_score_bias_selects_but_does_not_weigh():
    D, E = 8, 4
    layer = MoELayer(D, _moe(E, 1, D, router="sigmoid_topk", score_bias=True), "loop")
    with torch.no_grad():
        layer.score_bias.copy_(torch.tensor([0.0, 0.0, 10.0, 0.0]))
    idx, w, _ = layer.route(torch.randn(5, D))
    assert (idx == 2).all() and torch.allclose(w, torch.ones_like(w))


def test_score_bias_as_buffer_counts_no_parameters():
    m = _moe(router="sigmoid_topk", score_bias=True)
    if not hasattr(m, "score_bias_buffer"):
        pytest.skip("spec has no score_bias_buffer")
    m = MoE(experts=4, top_k=2, expert=FFN(8), router="sigmoid_topk", score_bias=True, score_bias_buffer=True)
    spec = Transformer(vocab=10, width=8, layers=1, attention=Attention(2, 2, 4), moe=m, moe_layers=(0,))
    model = build(spec)
    assert nparams(model) == count(spec).total_params
    assert "decoder.blocks.0.ffn.score_bias" in dict(model.named_buffers())


def test_grouped_mm_falls_back_when_rows_are_misaligned():
    with pytest.warns(UserWarning, match="grouped_mm"):
        layer = MoELayer(6, _moe(D=6, F=6), "grouped_mm")
    assert layer.strategy == "loop"


def test_positions_limit_and_seed():
    spec = Transformer(vocab=10, width=8, layers=1, attention=Attention(2, 2, 4), ffn=FFN(8), positions=4)
    with pytest.raises(ValueError):
        build(spec)(torch.zeros(1, 5, dtype=torch.long))
    a, b = build(spec, seed=1), build(spec, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_decoder_is_causal_and_encoder_is_not():
    """Changing the last token changes no earlier decoder output (decoder-only); in an
    encoder-decoder it does, through the (bidirectional) encoder."""
    base = dict(vocab=12, width=8, layers=1, attention=Attention(2, 2, 4), ffn=FFN(8))
    ids = torch.tensor([[1, 2, 3, 4]])
    ids2 = ids.clone()
    ids2[0, -1] = 5
    for spec, changes in [(Transformer(**base), False), (Transformer(**base, encoder_layers=1, relative_buckets=4), True)]:
        model = build(spec)
        with torch.no_grad():
            diff = (model(ids) - model(ids2))[0, :-1].abs().max()
        assert (diff > 0) == changes


@st.composite
def dlrms(draw):
    n, dim = draw(small(1, 4)), draw(small(2, 6))
    tables = tuple(Table(draw(small(2, 30)), dim, draw(small(1, 4))) for _ in range(n))
    return EmbeddingModel(dense_features=draw(small(1, 6)), tables=tables,
                          bottom_mlp=(draw(small(2, 8)), dim), top_mlp=(draw(small(2, 8)), 1),
                          interaction=draw(st.sampled_from(("dot", "dot", "cat"))))


def dlrm_inputs(spec, B, seed=0):
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(B, spec.dense_features, generator=g)
    sparse = [torch.randint(0, t.rows, (B, t.pooling), generator=g) for t in spec.tables]
    return dense, sparse


@SETTINGS
@given(spec=dlrms(), B=small(1, 4))
def test_dlrm_params_and_flops_equal_count(spec, B):
    c = count(spec)
    model = build(spec)
    dense, sparse = dlrm_inputs(spec, B)
    assert nparams(model) == c.total_params
    assert count_flops(model, dense, sparse) == c.flops_per_token * B
    assert model(dense, sparse).shape == (B, 1)


def test_dlrm_tensor_input_and_sparse_gradients():
    spec = EmbeddingModel(dense_features=3, tables=(Table(50, 4, 2), Table(40, 4, 2)), bottom_mlp=(8, 4), top_mlp=(6, 1))
    dense, sparse = dlrm_inputs(spec, 3)
    model = build(spec, sparse=True)
    torch.testing.assert_close(model(dense, sparse), model(dense, torch.stack(sparse, dim=1)))
    model(dense, sparse).sum().backward()
    assert model.tables[0].weight.grad.is_sparse
    assert "bmm" in flop_breakdown(model, dense, sparse)
