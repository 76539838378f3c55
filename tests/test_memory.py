"""The memory and communication formulas of chapter "What FLOPs don't count" (whatruns.memory)."""

import pytest
import torch

from whatruns import FFN, MoE
from whatruns.count import experts_touched, ffn_flops, ffn_params, matmul_bytes
from whatruns.measure import count_flops
from whatruns.memory import (activation_bytes, all_to_all_bytes, intensity, layer_bytes, layer_flops,
                             weight_bytes, weight_bytes_per_token)
from whatruns.nn import MoELayer

D = 64


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("tokens", [1, 7, 512])
def test_dense_ffn_bytes_are_its_matmuls_bytes(gated, tokens):
    f = FFN(256, gated=gated)
    mats = [(D, 256)] * (f.matrices - 1) + [(256, D)]
    for b in (2, 4):
        assert layer_bytes(D, f, tokens, b) == sum(matmul_bytes(tokens, i, o, b) for i, o in mats)
        assert weight_bytes(D, f, tokens, b) == b * ffn_params(D, f)  # every weight, whatever the batch
    assert layer_flops(D, f, tokens) == tokens * ffn_flops(D, f)


def test_moe_reads_k_experts_for_one_token_and_all_for_a_large_batch():
    m = MoE(64, 2, FFN(128))
    expert, router = 2 * ffn_params(D, m.expert), 2 * D * 64
    assert weight_bytes(D, m, 1) == pytest.approx(2 * expert + router)
    assert weight_bytes(D, m, 100_000) == pytest.approx(64 * expert + router)
    assert weight_bytes(D, m, 16) == pytest.approx(experts_touched(64, 2, 16) * expert + router)
    assert weight_bytes(D, m, 16, touched=30) == 30 * expert + router  # a measured count replaces the expectation
    # per token: the dense FFN of the same active FLOPs gets cheaper faster
    dense = FFN(256)
    ratio = [weight_bytes_per_token(D, m, b) / weight_bytes_per_token(D, dense, b) for b in (1, 16, 1024)]
    assert ratio[0] == pytest.approx(1 + router / expert / 2, rel=1e-9)  # batch 1: the same k*F weights
    assert ratio[0] < ratio[1] < ratio[2] <= 32.1  # then up to E/k times more


def test_moe_flops_match_the_counter_and_intensity_is_flops_per_byte():
    m = MoE(8, 2, FFN(32), shared=FFN(16), shared_experts=1, shared_gate=True)
    x = torch.randn(24, D, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    assert count_flops(MoELayer(D, m, "loop"), x) == layer_flops(D, m, 24)
    assert intensity(D, m, 24) == pytest.approx(layer_flops(D, m, 24) / layer_bytes(D, m, 24))
    assert activation_bytes(D, m, 24, 4) == 2 * activation_bytes(D, m, 24, 2)


def test_intensity_grows_with_batch_and_moe_lags_dense():
    m, dense = MoE(64, 2, FFN(1024)), FFN(2048)
    for a, b in [(1, 8), (8, 64), (64, 512)]:
        assert intensity(D, dense, a) < intensity(D, dense, b)
        assert intensity(D, m, a) < intensity(D, m, b)
    assert intensity(D, m, 64) < intensity(D, dense, 64) / 4  # the MoE reads ~E(1-(1-k/E)^B)/k x the weights
    assert intensity(D, dense, 1) == pytest.approx(1.0, rel=0.05)  # bf16, one token: ~1 FLOP per byte


def test_all_to_all_bytes():
    assert all_to_all_bytes(1024, 512, 2, 1) == 0  # one rank: nothing crosses
    assert all_to_all_bytes(1024, 512, 2, 2, 4) == 1024 * 2 * 512 * 4 / 2
    assert all_to_all_bytes(1024, 512, 2, 8) == pytest.approx(2 * 1024 * 2 * 512 * 7 / 8)
