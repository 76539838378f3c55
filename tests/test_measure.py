"""measure: the FLOPs torch counts (with and without the missing formulas), parameters touched, time."""

import ast
import pathlib

import pytest
import torch
import torch.nn.functional as F

import whatruns.measure as measure
from whatruns import FFN, MoE, Attention, EmbeddingModel, Norm, Table, Transformer, count
from whatruns.measure import count_flops, flop_breakdown, matmul_gflops, median_time, touched_params
from whatruns.nn import build

torch.set_num_threads(1)


def qkv(B=2, H=4, K=4, T=5, S=7, d=8, dv=8):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(B, H, T, d, generator=g), torch.randn(B, K, S, d, generator=g),
            torch.randn(B, K, S, dv, generator=g))


@pytest.mark.parametrize("K", [4, 2, 1])
def test_cpu_attention_counts_zero_unless_corrected(K):
    q, k, v = qkv(K=K)
    sdpa = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=K < 4)
    assert count_flops(sdpa, q, k, v, corrected=False) == 0
    assert count_flops(sdpa, q, k, v) == 2 * 2 * 4 * 5 * 7 * (8 + 8)  # 2*B*H*T*S*(d + dv)
    assert "_scaled_dot_product_flash_attention_for_cpu" in flop_breakdown(sdpa, q, k, v)


def test_attention_with_other_value_width_falls_back_to_counted_matmuls():
    q, k, v = qkv(dv=4)  # the CPU kernel wants d == dv; the math path is two bmm's, counted anyway
    ops = flop_breakdown(F.scaled_dot_product_attention, q, k, v, corrected=False)
    assert ops == {"bmm": 2 * 2 * 4 * 5 * 7 * (8 + 4)}


def test_attention_backward_is_counted():
    q, k, v = (t.requires_grad_() for t in qkv(S=5))
    fwd = 2 * 2 * 4 * 5 * 5 * 16
    assert count_flops(F.scaled_dot_product_attention, q, k, v, backward=True, corrected=False) == 0
    # forward: 2 products; backward: recompute the scores, then 4 more products
    assert count_flops(F.scaled_dot_product_attention, q, k, v, backward=True) == fwd * 7 // 2


def test_grouped_mm_counts_zero_unless_corrected():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(12, 8, generator=g), torch.randn(3, 8, 16, generator=g)
    offs = torch.tensor([2, 2, 10], dtype=torch.int32)  # rows past the last offset are not computed
    gmm = lambda x, w: torch._grouped_mm(x, w, offs=offs)
    assert count_flops(gmm, x, w, corrected=False) == 0
    assert count_flops(gmm, x, w) == 2 * 10 * 8 * 16
    x.requires_grad_(), w.requires_grad_()
    assert count_flops(gmm, x, w, backward=True) == 3 * 2 * 10 * 8 * 16  # input and weight gradients
    w3 = torch.randn(3, 12, 8, generator=g)  # batched 3-D x 3-D
    assert count_flops(torch._grouped_mm, w3, w) == 2 * 3 * 12 * 8 * 16


def tiny_moe_lm(**moe):
    return Transformer(vocab=20, width=8, layers=1, attention=Attention(2, 2, 4),
                       moe=MoE(experts=4, top_k=2, expert=FFN(8), **moe), moe_layers=(0,))


def test_the_pitfall_same_model_both_ways():
    spec = tiny_moe_lm()
    ids = torch.randint(0, 20, (2, 6), generator=torch.Generator().manual_seed(0))
    model = build(spec, moe_strategy="grouped_mm")
    c = count(spec, seq_len=6).breakdown
    right, wrong = count_flops(model, ids), count_flops(model, ids, corrected=False)
    attention_scores = c["attention"].flops * 12 - 2 * (4 * 8 * 8) * 12  # minus the 4 projections
    assert right - wrong == attention_scores + c["routed_experts"].flops * 12
    assert set(flop_breakdown(model, ids, corrected=False)) == {"mm"}
    by_module = flop_breakdown(model, ids, by_module=True)
    assert by_module["Global"]["_grouped_mm"] == c["routed_experts"].flops * 12


def test_inference_mode_counts_like_no_grad_in_this_torch():
    """An observation for the book: torch 2.13's counter is not blind under inference_mode here."""
    model = build(tiny_moe_lm())
    ids = torch.randint(0, 20, (1, 4))
    counter = measure.flop_counter()
    with torch.inference_mode(), counter:
        model(ids)
    assert counter.get_total_flops() == count_flops(model, ids)


def test_one_token_touches_one_row_and_its_experts():
    spec = Transformer(vocab=30, width=8, layers=1, attention=Attention(2, 2, 4),
                       moe=MoE(experts=4, top_k=1, expert=FFN(8), router="softmax_topk"), moe_layers=(0,))
    model = build(spec)
    t = touched_params(model, torch.tensor([[7]]))
    per = t.per_param
    assert per["embed.weight"] == (8, 30 * 8)  # the one row read
    assert per["head.weight"] == (30 * 8, 30 * 8)  # the head is a dense matmul
    for name in ("up", "gate", "down"):
        touched, n = per[f"decoder.blocks.0.ffn.experts.{name}"]
        assert touched == n // 4  # one expert of four
    # one token sees one key: softmax over one score is constant, so q and k learn nothing
    assert per["decoder.blocks.0.attn.q.weight"][0] == 0 and per["decoder.blocks.0.attn.k.weight"][0] == 0
    assert per["decoder.blocks.0.ffn.router.weight"][0] == 8 * 4  # softmax couples every expert's score


def test_a_tied_embedding_is_the_head_so_every_row_works():
    spec = Transformer(vocab=30, width=8, layers=1, attention=Attention(2, 2, 4), ffn=FFN(8), tied=True)
    model = build(spec)
    assert touched_params(model, torch.tensor([[7]])).per_param["embed.weight"] == (30 * 8, 30 * 8)
    assert model.embed.weight.grad is not None and model.embed.weight.grad.dtype == torch.float32


def test_float32_leaves_rounding_noise_where_float64_does_not():
    spec = Transformer(vocab=30, width=64, layers=2, attention=Attention(4, 4, 16, bias=True), ffn=FFN(64),
                       positions=8)
    model, ids = build(spec), torch.randint(0, 30, (2, 8), generator=torch.Generator().manual_seed(0))
    noisy = touched_params(model, ids, precise=False, rtol=0).per_param
    exact = touched_params(model, ids).per_param
    k_bias = [n for n in exact if n.endswith("k.bias")]
    assert all(exact[n][0] == 0 for n in k_bias)
    assert sum(noisy[n][0] for n in k_bias) > 0  # in float32 the useless bias looks touched


def test_rotary_makes_the_key_bias_useful():
    """RoPE rotates the key bias differently at each position, so it no longer shifts every
    score of a query by the same amount: the bias gets a real gradient."""
    spec = Transformer(vocab=30, width=16, layers=1, attention=Attention(2, 2, 8, bias=True), ffn=FFN(16))
    t = touched_params(build(spec), torch.randint(0, 30, (1, 6), generator=torch.Generator().manual_seed(0)))
    assert t.per_param["decoder.blocks.0.attn.k.bias"][0] == 16


def test_top1_after_softmax_router_gets_no_gradient():
    """Mixtral-style topk_softmax with k=1: the weight is softmax of one logit, always 1."""
    spec = Transformer(vocab=30, width=8, layers=1, attention=Attention(2, 2, 4),
                       moe=MoE(experts=4, top_k=1, expert=FFN(8), router="topk_softmax"), moe_layers=(0,))
    model = build(spec)
    ids = torch.randint(0, 30, (2, 5))
    assert touched_params(model, ids).per_param["decoder.blocks.0.ffn.router.weight"][0] == 0
    t = touched_params(model, lambda: model(ids).sum() + model.aux_loss())  # the balance loss trains it
    assert t.per_param["decoder.blocks.0.ffn.router.weight"][0] == 8 * 4


def test_key_bias_gets_only_rounding_noise():
    spec = Transformer(vocab=30, width=16, layers=1, attention=Attention(4, 4, 4, bias=True), ffn=FFN(16),
                       norm=Norm("layernorm", bias=True), positions=8)
    model = build(spec)
    t = touched_params(model, torch.randint(0, 30, (2, 6)))
    assert t.per_param["decoder.blocks.0.attn.k.bias"][0] == 0
    assert t.per_param["decoder.blocks.0.attn.q.bias"][0] == 16
    assert t.per_param["positions.weight"] == (6 * 16, 8 * 16)  # rows past T are not read
    assert t.touched < t.total and 0 < t.fraction < 1 and "decoder.blocks.0.attn.k.bias" in t.untouched()


def test_dlrm_touches_the_rows_it_reads():
    spec = EmbeddingModel(dense_features=3, tables=(Table(1000, 4, 3), Table(500, 4, 1)), bottom_mlp=(4,), top_mlp=(1,))
    dense = torch.randn(2, 3)
    sparse = [torch.tensor([[1, 2, 3], [3, 4, 5]]), torch.tensor([[9], [9]])]
    for sparse_grad in (False, True):
        t = touched_params(build(spec, sparse=sparse_grad), dense, sparse)
        assert t.per_param["tables.0.weight"] == (5 * 4, 1000 * 4)
        assert t.per_param["tables.1.weight"] == (1 * 4, 500 * 4)


def test_timing():
    calls = []
    assert median_time(lambda: calls.append(1), repeats=5, warmup=2) >= 0
    assert len(calls) == 7
    assert matmul_gflops(n=64, repeats=3) > 0


def test_read_bandwidth_is_bytes_of_one_row_through_the_matrix_per_second(monkeypatch):
    """The bandwidth a roofline bounds products with is measured by the product routine itself: one row
    (1 x rows) through a rows x cols fp32 matrix of the bytes asked for, its matmul_bytes per second."""
    from whatruns.count import matmul_bytes
    seen = []

    def fake(fn, *args, repeats, **kw):
        seen.append((fn, [tuple(a.shape) for a in args], repeats))
        return 0.5
    monkeypatch.setattr(measure, "median_time", fake)
    assert measure.read_bandwidth(2 ** 20, repeats=3, rows=256) == matmul_bytes(1, 256, 1024, 4) / 0.5 / 1e9
    assert seen == [(torch.mm, [(1, 256), (256, 1024)], 3)]
    monkeypatch.undo()
    assert measure.read_bandwidth(2 ** 20, repeats=1) > 0


def test_measure_knows_only_torch():
    tree = ast.parse(pathlib.Path(measure.__file__).read_text())
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
              {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m is None or m.startswith("whatruns") or m.startswith(".") for m in modules), modules
