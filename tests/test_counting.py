"""Units of chapter "Counting what runs": matmul FLOPs and bytes, arithmetic intensity, the
roofline, and what torch's FLOP counter sees (and under which context managers)."""

import torch
from hypothesis import given, settings, strategies as st
from torch.utils.flop_counter import FlopCounterMode

from whatruns.count import arithmetic_intensity, matmul_bytes, matmul_flops, roofline
from whatruns.measure import count_flops, matmul_gflops, memory_bandwidth

dims = st.integers(min_value=1, max_value=48)


@settings(max_examples=30, deadline=None)
@given(dims, dims, dims)
def test_counter_counts_a_matmul_as_matmul_flops(m, k, n):
    a, b = torch.randn(m, k), torch.randn(k, n)
    assert count_flops(torch.mm, a, b) == matmul_flops(m, k, n)


def test_matmul_bytes_reads_operands_and_writes_result_once():
    assert matmul_bytes(2, 3, 5) == 4 * (6 + 15 + 10)
    assert matmul_bytes(2, 3, 5, bytes_per_element=2) == 2 * (6 + 15 + 10)


@given(st.integers(min_value=1, max_value=4096), st.sampled_from([2, 4]))
def test_square_matmul_intensity_is_2n_over_3b(n, b):
    i = arithmetic_intensity(matmul_flops(n, n, n), matmul_bytes(n, n, n, b))
    assert abs(i - 2 * n / (3 * b)) < 1e-9 * n


@given(st.integers(min_value=2, max_value=65536), st.sampled_from([2, 4]))
def test_matvec_intensity_stays_below_2_over_b(d, b):
    """One token through a d x d weight: 2 d^2 FLOPs over at least d^2 weights read."""
    i = arithmetic_intensity(matmul_flops(1, d, d), matmul_bytes(1, d, d, b))
    assert 0.5 * 2 / b <= i < 2 / b


def test_roofline_is_the_lower_of_the_two_roofs():
    assert roofline(0.5, peak_flops=100e9, bandwidth=10e9) == 5e9
    assert roofline(50, peak_flops=100e9, bandwidth=10e9) == 100e9
    assert roofline(0, peak_flops=100e9, bandwidth=10e9) == 0


def test_measured_speeds_are_positive():
    assert matmul_gflops(32, repeats=1) > 0
    assert matmul_gflops(64, repeats=1, m=1) > 0
    assert memory_bandwidth(2 ** 20, repeats=1) > 0


def test_inference_mode_counts_like_no_grad():
    """Reported for torch 2.3 (pytorch/pytorch#126268: 0 FLOPs under inference_mode); torch
    2.13 counts the same under both. The chapter relies on it."""
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    x = torch.randn(4, 16)
    counts = []
    for ctx in (torch.no_grad, torch.inference_mode):
        counter = FlopCounterMode(display=False)
        with ctx(), counter:
            model(x)
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] == matmul_flops(4, 16, 32) + matmul_flops(4, 32, 8)
