"""The routing formulas of count.py (chapter "Mixture of experts: most parameters rest") against
what a built MoE layer does: capacity and dropped choices, experts reached, one-hot dispatch FLOPs."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from whatruns import FFN, MoE
from whatruns.count import expected_dropped_fraction, expert_capacity, experts_touched, onehot_dispatch_flops
from whatruns.measure import count_flops, touched_params
from whatruns.nn import MoELayer

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def fair_router(layer: MoELayer, seed: int = 0) -> MoELayer:
    """Give the router orthonormal rows: for Gaussian tokens its E logits are then independent
    N(0, 1), so every token picks its k experts uniformly at random (needs D >= E)."""
    E, D = layer.router.weight.shape
    q, _ = torch.linalg.qr(torch.randn(D, E, generator=torch.Generator().manual_seed(seed)))
    with torch.no_grad():
        layer.router.weight.copy_(q.T)
    return layer


@SETTINGS
@given(E=st.integers(2, 8), k=st.integers(1, 3), N=st.integers(1, 40), cf=st.floats(0.1, 3.0), seed=st.integers(0, 9))
def test_capacity_is_what_the_layer_keeps(E, k, N, cf, seed):
    k = min(k, E)
    torch.manual_seed(seed)
    layer = MoELayer(8, MoE(experts=E, top_k=k, expert=FFN(4), capacity_factor=cf), "loop")
    with torch.no_grad():
        layer(torch.randn(N, 8))
    C = expert_capacity(N, E, k, cf)
    assert C == math.ceil(cf * N * k / E)
    assert layer.dropped == sum(max(0, int(n) - C) for n in layer.load)


def test_expected_dropped_fraction_limits():
    assert expected_dropped_fraction(64, 8, 2, 100.0) == 0.0  # capacity above any load
    # capacity 1 row per expert: at most E of the N*k choices survive (all E, unless an expert gets none)
    assert expected_dropped_fraction(64, 8, 1, 1 / 8) == pytest.approx(1 - 8 * (1 - (7 / 8) ** 64) / 64, abs=1e-12)
    assert expected_dropped_fraction(10, 4, 4, 0.5) == 0.5  # k = E: every expert gets all N, keeps N/2
    # decreasing in the capacity factor
    fr = [expected_dropped_fraction(512, 8, 1, cf) for cf in (0.5, 1.0, 1.25, 2.0)]
    assert fr == sorted(fr, reverse=True) and fr[0] == pytest.approx(0.5)


@pytest.mark.parametrize("E,k,cf", [(8, 1, 1.0), (8, 2, 1.25), (16, 2, 1.0)])
def test_expected_dropped_fraction_matches_uniform_routing(E, k, cf):
    N, R = 256, 30
    layer = fair_router(MoELayer(32, MoE(experts=E, top_k=k, expert=FFN(4), capacity_factor=cf), "grouped_mm"))
    dropped = 0
    for r in range(R):
        with torch.no_grad():
            layer(torch.randn(N, 32, generator=torch.Generator().manual_seed(r)))
        dropped += layer.dropped
    assert dropped / (R * N * k) == pytest.approx(expected_dropped_fraction(N, E, k, cf), abs=0.015)


def test_experts_touched():
    assert experts_touched(64, 2, 1) == pytest.approx(2)
    assert experts_touched(64, 2, 16) == pytest.approx(25.49, abs=0.01)  # RESEARCH.md's memory example
    assert experts_touched(64, 2, 10_000) == pytest.approx(64)
    assert experts_touched(8, 8, 3) == 8


@pytest.mark.parametrize("E,k", [(8, 2), (16, 1), (32, 4)])
def test_one_token_touches_k_of_E_experts(E, k):
    layer = fair_router(MoELayer(32, MoE(experts=E, top_k=k, expert=FFN(8)), "grouped_mm"))
    t = touched_params(layer, torch.randn(1, 32, generator=torch.Generator().manual_seed(0)))
    n = sum(t.per_param[p][0] for p in ("experts.gate", "experts.up", "experts.down"))
    total = sum(t.per_param[p][1] for p in ("experts.gate", "experts.up", "experts.down"))
    assert n * E == total * k


def test_experts_touched_matches_uniform_routing():
    E, k, n, R = 16, 2, 8, 40
    layer = fair_router(MoELayer(32, MoE(experts=E, top_k=k, expert=FFN(4)), "grouped_mm"))
    reached = 0
    for r in range(R):
        with torch.no_grad():
            layer(torch.randn(n, 32, generator=torch.Generator().manual_seed(r)))
        reached += int((layer.load > 0).sum())
    assert reached / R == pytest.approx(experts_touched(E, k, n), abs=0.5)


@pytest.mark.parametrize("N,E,C,D", [(12, 4, 6, 8), (5, 3, 2, 7)])
def test_onehot_dispatch_flops_is_the_einsum(N, E, C, D):
    dispatch, x = torch.zeros(N, E, C), torch.randn(N, D)
    assert count_flops(lambda: torch.einsum("nec,nd->ecd", dispatch, x)) == onehot_dispatch_flops(N, E, C, D)
    out = torch.randn(E, C, D)
    assert count_flops(lambda: torch.einsum("nec,ecd->nd", dispatch, out)) == onehot_dispatch_flops(N, E, C, D)
