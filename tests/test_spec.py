"""The spec: a stack stored as runs of blocks, the one-line form that writes it, the views that read it back,
what with_ does to each layer, and the bounds on sizes."""

import time

import pytest

from whatruns import FFN, MoE, Attention, Transformer, count, load
from whatruns.spec import (BOUNDS, Block, LinearAttention, Mamba2, Run, SpecError, from_dict, runs, to_dict)

A = Attention(4, 2, 8)
F = FFN(32)
M = MoE(experts=4, top_k=2, expert=FFN(16))


def test_runs_merge_equal_neighbours():
    a, b = Block(A, F), Block(A, M)
    assert runs([a, a, b, Run(b, 2), a]) == (Run(a, 2), Run(b, 3), Run(a, 1))


def test_one_line_form_is_the_blocks_form():
    one = Transformer(vocab=10, width=32, layers=5, attention=A, ffn=F, moe=M, moe_layers=[1, 2, 4],
                      sliding_window=3, sliding_layers=[0, 1])
    w = A.with_(window=3)
    blocks = Transformer(vocab=10, width=32, blocks=[Block(w, F), Block(w, M), Block(A, M), Block(A, F), Block(A, M)])
    assert one == blocks and count(one) == count(blocks)
    assert one.moe_layers == (1, 2, 4) and one.sliding_layers == (0, 1) and one.sliding_window == 3
    assert one.attention == A and one.ffn == F and one.moe == M and one.layers == 5


def test_views_refuse_to_guess_on_heterogeneous_stacks():
    s = Transformer(vocab=10, width=32, blocks=[Block(A, F), Block(Attention(4, 4, 8), FFN(64))])
    for view in ("attention", "ffn"):
        with pytest.raises(SpecError, match="read them from .blocks"):
            getattr(s, view)
    hybrid = Transformer(vocab=10, width=32, blocks=[Block(LinearAttention(4, 2, 8, 8), F), Block(Mamba2(4, 8, 16), None)])
    assert hybrid.attention is None and hybrid.moe is None and hybrid.ffn == F


def test_with_keeps_the_pattern_of_a_large_model_in_a_small_one():
    ds = load("deepseek-v3")  # 3 dense layers, then 58 MoE layers
    small = ds.with_(layers=5)
    assert small.layers == 5 and small.moe_layers == (3, 4)
    longer = small.with_(layers=7)
    assert longer.moe_layers == (3, 4, 5, 6)  # extended by its last layer
    oss = load("gpt-oss-120b").with_(layers=4, attention=Attention(8, 2, 16, bias=True, out_bias=True, sinks=True))
    assert oss.sliding_layers == (0, 2) and oss.sliding_window == 128  # windows survive a new attention
    assert oss.with_(sliding_layers=[1]).sliding_layers == (1,)
    dense = Transformer(vocab=10, width=32, layers=3, attention=A, ffn=F)
    assert dense.with_(moe=M, moe_layers=[2]).moe_layers == (2,)
    assert dense.with_(ffn=FFN(8)).ffn == FFN(8)


def test_the_own_format_reads_both_forms():
    s = Transformer(vocab=10, width=32, blocks=[Run(Block(LinearAttention(4, 2, 8, 8), M), 3),
                                                 Block(A.with_(chunk=4), F, post_norms=True)])
    assert from_dict(to_dict(s)) == s
    one = {"whatruns": "transformer", "vocab": 10, "width": 32, "layers": 2, "attention": {"heads": 4, "kv_heads": 2,
           "head_dim": 8}, "ffn": {"width": 32}}
    assert from_dict(one) == Transformer(vocab=10, width=32, layers=2, attention=A, ffn=F)
    with pytest.raises(SpecError, match="kind must be one of"):
        from_dict({**to_dict(s), "blocks": [{"block": {"mixer": {"kind": "rnn"}}, "repeat": 1}]})


@pytest.mark.parametrize("make, fragment", [
    (lambda: Transformer(vocab=2 ** 40, width=8, layers=1, attention=Attention(1, 1, 8), ffn=FFN(8)), "vocab"),
    (lambda: Transformer(vocab=8, width=2 ** 21, layers=1, attention=Attention(1, 1, 8), ffn=FFN(8)), "width"),
    (lambda: Transformer(vocab=8, width=8, blocks=[Run(Block(A, F), 10 ** 18)]), "repeat"),
    (lambda: Transformer(vocab=8, width=8, blocks=[Run(Block(A, F), 2 ** 16), Run(Block(A, M), 2 ** 16)]), "layers"),
    (lambda: MoE(experts=10 ** 13, top_k=1, expert=F), "experts"),
    (lambda: Attention(10 ** 300, 1, 8), "digits"),
])
def test_sizes_beyond_any_model_are_refused_in_one_line(make, fragment):
    with pytest.raises(SpecError) as e:
        make()
    assert fragment in str(e.value) and "bound" in str(e.value) and "\n" not in str(e.value)


def test_counting_does_not_grow_with_the_number_of_layers():
    """A run of 65,536 equal layers costs what one layer costs: count multiplies, it does not loop."""
    def timed(n):
        s = Transformer(vocab=100, width=64, blocks=[Run(Block(A, M), n)])
        start = time.perf_counter()
        for _ in range(200):
            c = count(s)
        return (time.perf_counter() - start) / 200, c
    t1, c1 = timed(1)
    tn, cn = timed(2 ** 16)
    assert cn.breakdown["routed_experts"].params == 2 ** 16 * c1.breakdown["routed_experts"].params
    assert tn < 20 * t1 + 1e-3  # the same work (timing noise aside), not 65,536 times it
