"""The "gather" and "threads" MoE strategies and the benchmark's models (chapter "What FLOPs don't count")."""

import math
import threading

import pytest
import torch

import whatruns
from whatruns import FFN, MoE
from whatruns.count import ffn_flops
from whatruns.measure import count_flops
from whatruns import bench
from whatruns.nn import MoELayer, _deal_out


@pytest.mark.parametrize("cf", [None, 0.5, 1.0])
@pytest.mark.parametrize("gated", [True, False])
def test_gather_computes_what_the_loop_computes_on_padded_rows(cf, gated):
    D, E, k, N = 16, 4, 2, 24
    m = MoE(E, k, FFN(8, gated=gated, bias=True), capacity_factor=cf)
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(0))
    layers = {}
    for s in ("loop", "gather"):
        torch.manual_seed(0)
        layers[s] = MoELayer(D, m, s)
    with torch.no_grad():
        out = {s: layer(x) for s, layer in layers.items()}
    torch.testing.assert_close(out["gather"], out["loop"])
    C = math.ceil(cf * N * k / E) if cf else int(layers["loop"].load.max())
    assert count_flops(layers["gather"], x) == 2 * N * D * E + E * C * ffn_flops(D, m.expert)  # padding counted


def test_gather_is_accepted_by_build():
    spec = whatruns.load(bench.hf_config("mixtral", 16) | {"hidden_size": 16, "num_attention_heads": 2,
                                                                "num_key_value_heads": 2, "num_local_experts": 4})
    ids = torch.randint(0, bench.VOCAB, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(whatruns.build(spec, moe_strategy="gather")(ids),
                                   whatruns.build(spec, moe_strategy="loop")(ids))


def test_benchmark_models_match_flops_and_params_as_the_issue_asks():
    c = {name: whatruns.count(whatruns.load(cfg), seq_len=bench.T) for name, cfg in bench.SPECS.items()}
    router = 2 * bench.D * bench.E
    assert c["moe"].flops_per_token == c["same FLOPs (a)"].flops_per_token + router  # (a): the same active FLOPs
    assert c["moe"].total_params == c["same params (b)"].total_params + bench.D * bench.E  # (b): + the router
    assert c["same params (b)"].flops_per_token > 20 * c["moe"].flops_per_token


@pytest.fixture
def two_threads():
    """torch's intra-op threads set to 2 for the test (other test modules set 1), then put back."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _pair(m, D=16):
    layers = {}
    for s in ("loop", "threads"):
        torch.manual_seed(0)
        layers[s] = MoELayer(D, m, s)
    return layers


@pytest.mark.parametrize("cf", [None, 0.5])
@pytest.mark.parametrize("gated", [True, False])
def test_threads_computes_what_the_loop_computes(two_threads, cf, gated):
    D, N = 16, 64
    layers = _pair(MoE(8, 2, FFN(8, gated=gated, bias=True), capacity_factor=cf), D)
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(0))
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            out = {s: layer(x) for s, layer in layers.items()}
        assert torch.equal(out["threads"], out["loop"])  # the same products on the same rows, bit for bit
        assert torch.get_num_threads() == 2


def test_threads_runs_each_share_on_its_own_thread_with_one_torch_thread(two_threads):
    seen = []

    def work(share):
        seen.append((tuple(share), threading.get_ident(), torch.get_num_threads(), torch.is_grad_enabled()))

    rows = [100, 1, 1, 50, 30, 20]
    with torch.no_grad():
        _deal_out(work, [0, 1, 2, 3, 4, 5], rows)
    assert len({ident for _, ident, _, _ in seen}) == 2          # two threads at once
    assert all(n == 1 and not grad for _, _, n, grad in seen)    # each matmul on one thread, no autograd
    assert sorted(e for share, *_ in seen for e in share) == [0, 1, 2, 3, 4, 5]
    assert sorted(sum(rows[e] for e in share) for share, *_ in seen) == [101, 101]  # busiest first, balanced
    assert torch.get_num_threads() == 2


def test_threads_restores_the_thread_count_and_raises_a_workers_error(two_threads):
    def work(share):
        if 1 in share:
            raise ValueError("expert 1 failed")

    with pytest.raises(ValueError, match="expert 1 failed"):
        _deal_out(work, [0, 1], [5, 4])
    assert torch.get_num_threads() == 2


def test_threads_falls_back_to_the_loop_where_threads_would_not_see_the_state(two_threads):
    """With gradients, or under the FLOP counter (a dispatch mode, local to a thread), the experts
    run in the calling thread: gradients flow and every matmul is counted."""
    D, N = 16, 32
    m = MoE(4, 2, FFN(8))
    layers = _pair(m, D)
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(1))
    assert count_flops(layers["threads"], x) == count_flops(layers["loop"], x) == \
        2 * N * D * 4 + N * 2 * ffn_flops(D, m.expert)
    for layer in layers.values():
        layer(x).sum().backward()
    torch.testing.assert_close(layers["threads"].experts.up.grad, layers["loop"].experts.up.grad)
    assert layers["threads"].experts.up.grad.abs().sum() > 0


def _tiny_built():
    """bench.models' layout on a tiny MoE and a tiny dense model (the real ones hold 100M parameters)."""
    small = {"hidden_size": 16, "num_attention_heads": 2, "num_key_value_heads": 2}
    moe_spec = whatruns.load(bench.hf_config("mixtral", 16) | small | {"num_local_experts": 4})
    dense_spec = whatruns.load(bench.hf_config("llama", 32) | small)
    moe = whatruns.build(moe_spec, moe_strategy="loop").eval()
    built = {f"moe/{s}": (moe, moe_spec, s) for s in ("loop", "gather", "onehot")}
    built["same FLOPs (a)"] = (whatruns.build(dense_spec).eval(), dense_spec, None)
    return built


def test_one_moe_model_runs_every_strategy():
    """bench.forward sets the strategy on the model's MoE layers: one model, built once, computes the same
    function every way (the benchmark no longer builds one model per strategy)."""
    built = _tiny_built()
    ids = torch.randint(0, bench.VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = {name: bench.forward(m, s, ids) for name, (m, _, s) in built.items() if s}
    assert len({id(m) for m, _, _ in built.values()}) == 2
    for name in ("moe/gather", "moe/onehot"):
        torch.testing.assert_close(out[name], out["moe/loop"])
    assert built["moe/onehot"][0].moe_layers()[0].strategy == "onehot"


def test_run_reuses_built_models_and_counts_their_flops():
    built = _tiny_built()
    r = bench.run(["loop", "gather"], repeats=2, batch=1, dense=("same FLOPs (a)",), built=built)
    assert list(r["median_s"]) == ["moe/loop", "moe/gather", "same FLOPs (a)"]
    assert all(len(t) == 2 for t in r["times_s"].values())
    per_token = r["count_flops_per_token"]
    assert r["measured_flops"]["moe/loop"] == per_token["moe/loop"] * bench.T   # the exact strategy: count() FLOPs
    assert r["measured_flops"]["moe/gather"] > r["measured_flops"]["moe/loop"]   # padded to the busiest expert
    assert r["measured_flops"]["same FLOPs (a)"] == per_token["same FLOPs (a)"] * bench.T
    assert r["moe_over_a"] == {s: r["median_s"][f"moe/{s}"] / r["median_s"]["same FLOPs (a)"] for s in ("loop", "gather")}
