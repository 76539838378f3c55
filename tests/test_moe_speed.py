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
from torch.utils.flop_counter import FlopCounterMode

from whatruns.nn import THREADS_MIN_ROWS, MoELayer, _DealtOutExperts, _Plan, _deal_out, auto_strategy


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


def test_threads_takes_busiest_first_from_one_queue_each_on_one_torch_thread(two_threads):
    seen, lock = [], threading.Lock()

    def work(e):
        with lock:
            seen.append((e, threading.get_ident(), torch.get_num_threads(), torch.is_grad_enabled()))

    rows = [100, 1, 1, 50, 30, 20]
    with torch.enable_grad():
        _deal_out(work, [0, 1, 2, 3, 4, 5], rows)
    assert sorted(e for e, *_ in seen) == [0, 1, 2, 3, 4, 5]      # every expert once
    assert len({ident for _, ident, _, _ in seen}) <= 2            # on at most torch's two threads
    assert all(n == 1 and not grad for _, _, n, grad in seen)      # each matmul on one thread, no autograd
    assert [e for e, *_ in seen][:2] in ([0, 3], [3, 0])           # the two busiest taken first
    assert torch.get_num_threads() == 2


def test_threads_restores_the_thread_count_and_raises_a_workers_error(two_threads):
    def work(e):
        if e == 1:
            raise ValueError("expert 1 failed")

    with pytest.raises(ValueError, match="expert 1 failed"):
        _deal_out(work, [0, 1], [5, 4])
    assert torch.get_num_threads() == 2


def test_threads_counts_every_product_under_the_counter(two_threads):
    """Under the FLOP counter (a dispatch mode, local to a thread) the experts run in the calling thread as the
    loop: every matmul is counted."""
    D, N = 16, 32
    m = MoE(4, 2, FFN(8))
    layers = _pair(m, D)
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(1))
    assert count_flops(layers["threads"], x) == count_flops(layers["loop"], x) == \
        2 * N * D * 4 + N * 2 * ffn_flops(D, m.expert)


def _grads(layer, x, seed=0):
    x = x.clone().requires_grad_()
    y = layer(x)
    (y * torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))).sum().backward()
    return y.detach(), {"x": x.grad, **{n: p.grad for n, p in layer.named_parameters() if p.grad is not None}}


KINDS = [
    MoE(8, 2, FFN(8, gated=True, bias=True)),
    MoE(8, 2, FFN(8, gated=False, activation="relu2"), capacity_factor=0.5),
    MoE(8, 1, FFN(8, clamp=2.0)),
    MoE(8, 2, FFN(8), weight_input=True),                       # Llama 4: the weight scales the expert's input
    MoE(8, 2, FFN(8), shared=FFN(8), shared_experts=1, router="sigmoid_topk"),
]
KIND_IDS = ["gated-bias", "plain-relu2-cf", "clamped", "weight-input", "shared-sigmoid"]


@pytest.mark.parametrize("moe", KINDS, ids=KIND_IDS)
def test_threads_infers_exactly_as_the_loop(two_threads, moe):
    """Without gradients each expert gathers its own rows on its thread: the loop's numbers, bit for bit where
    gate and up are two products as in the loop, and up to float rounding where one product computes both
    (their shared block, no biases): the same sums, blocked differently by the math library."""
    layers = _pair(moe)
    x = torch.randn(48, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        fused = layers["threads"]._fused() is not None
        assert fused == (moe.expert.gated and not moe.expert.bias)
        out, loop = layers["threads"](x), layers["loop"](x)
        torch.testing.assert_close(out, loop, rtol=1e-5, atol=1e-7)
        assert fused or torch.equal(out, loop)
        if fused:  # the block broken: two products again, bit for bit
            layers["threads"].experts.gate.data = layers["threads"].experts.gate.contiguous()
            assert layers["threads"]._fused() is None and torch.equal(layers["threads"](x), loop)


def test_expert_weights_keep_their_in_out_layout():
    """Expert weights are shaped (E, out, in) but laid out (E, in, out), each expert's matrix read row by row,
    gate and up side by side in one block; the layout survives what a user does to a model: a state dict loaded
    or saved, a dtype, a deep copy, a pickle."""
    import copy
    import io

    def laid_out(layer):
        ex, (E, F_, D) = layer.experts, layer.experts.up.shape
        both = ex.gate_up()  # gate and up side by side, one block, (E, D, 2F)
        return (both is not None and both.is_contiguous() and torch.equal(both[:, :, :F_], ex.gate.transpose(1, 2))
                and torch.equal(both[:, :, F_:], ex.up.transpose(1, 2)) and all(ex.down[e].t().is_contiguous() for e in range(E)))

    torch.manual_seed(0)
    layer = MoELayer(16, MoE(8, 2, FFN(12)), "auto")
    assert layer.experts.up.shape == (8, 12, 16) and layer.experts.down.shape == (8, 16, 12) and laid_out(layer)
    other = MoELayer(16, MoE(8, 2, FFN(12)), "auto")
    other.load_state_dict({k: v.contiguous() for k, v in layer.state_dict().items()})  # from (E, out, in) tensors
    assert laid_out(other) and torch.equal(other.experts.up, layer.experts.up)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    third = MoELayer(16, MoE(8, 2, FFN(12)), "auto")
    third.load_state_dict(torch.load(buffer))
    assert laid_out(third) and torch.equal(third.experts.down, layer.experts.down)
    assert laid_out(copy.deepcopy(layer)) and laid_out(copy.deepcopy(layer).to(torch.float64))
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    again = torch.load(buffer, weights_only=False)
    assert laid_out(again) and torch.equal(again.experts.gate, layer.experts.gate)
    plain = MoELayer(16, MoE(8, 2, FFN(12, gated=False)), "auto")   # no gate: up and down each (E, in, out)
    assert plain.experts.gate_up() is None and all(plain.experts.up[e].t().is_contiguous() for e in range(8))


def test_deal_out_keeps_its_worker_threads_between_calls(two_threads):
    seen = []

    def work(e):
        seen.append(threading.get_ident())

    _deal_out(work, list(range(6)), [1] * 6)
    first = set(seen) - {threading.get_ident()}
    seen.clear()
    _deal_out(work, list(range(6)), [1] * 6)
    workers = {t.ident for t in threading.enumerate() if t.name.startswith("whatruns-experts")}
    assert (set(seen) - {threading.get_ident()}) <= workers and first <= workers and len(workers) == 1


def test_deal_out_starts_workers_of_its_own_in_a_forked_process(two_threads):
    """Threads do not survive a fork: a forked child starts workers of its own rather than waiting forever on
    its parent's. (The work is plain Python: torch's own OpenMP threads hang a forked child at its first
    parallel operation, whatever the strategy.)"""
    import multiprocessing
    _deal_out(lambda e: None, [0, 1], [1, 1])  # the parent's workers are running now
    with multiprocessing.get_context("fork").Pool(1) as pool:
        done, workers = pool.apply_async(_deal_out_in_child).get(timeout=60)
    assert done == [0, 1, 2, 3] and workers == ["whatruns-experts-0"]


def _deal_out_in_child():
    done = []
    _deal_out(done.append, [0, 1, 2, 3], [4, 3, 2, 1])
    return sorted(done), [t.name for t in threading.enumerate() if t.name.startswith("whatruns-experts")]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("moe", [
    MoE(8, 2, FFN(8, gated=True, bias=True)),
    MoE(8, 2, FFN(8, gated=False, activation="relu2"), capacity_factor=0.5),
    MoE(8, 1, FFN(8, clamp=2.0)),
    MoE(8, 2, FFN(8), weight_input=True),                       # Llama 4: the weight scales the expert's input
    MoE(8, 2, FFN(8), shared=FFN(8), shared_experts=1, router="sigmoid_topk"),
], ids=["gated-bias", "plain-relu2-cf", "clamped", "weight-input", "shared-sigmoid"])
def test_threads_trains_exactly_as_the_loop(threads, moe):
    """The threaded strategy's own backward gives the loop's gradients: input, router, every expert weight and
    bias (the unchosen experts' zero), and its forward the loop's numbers bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        layers = _pair(moe)
        x = torch.randn(48, 16, generator=torch.Generator().manual_seed(2))
        (y_t, g_t), (y_l, g_l) = _grads(layers["threads"], x), _grads(layers["loop"], x)
        assert torch.equal(y_t, y_l)
        assert g_t.keys() == g_l.keys() and "experts.up" in g_t and "router.weight" in g_t
        for name in g_l:
            torch.testing.assert_close(g_t[name], g_l[name], msg=name)
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


def test_threads_backward_passes_gradcheck_in_float64(two_threads):
    E, D, F_ = 3, 4, 5
    counts = [3, 0, 4]
    S = sum(counts)

    def t(*shape):
        return torch.randn(*shape, dtype=torch.float64, generator=g).requires_grad_()

    for gated, into in ((True, False), (False, True), (True, True)):
        g = torch.Generator().manual_seed(0)
        plan = _Plan(counts, "silu", 0.0, into)
        args = [t(S, D), torch.rand(S, dtype=torch.float64, generator=g).requires_grad_(),
                t(E, F_, D) if gated else None, t(E, F_, D), t(E, D, F_), t(E, F_) if gated else None, t(E, F_), t(E, D)]
        assert torch.autograd.gradcheck(lambda *a: _DealtOutExperts.apply(plan, *a), args)


def test_auto_is_threads_on_cpu_and_grouped_mm_where_threads_would_not_see_the_state(two_threads, monkeypatch):
    x = torch.randn(4, 16)
    assert auto_strategy(x) == "threads"
    with FlopCounterMode(display=False):
        assert auto_strategy(x) == "grouped_mm"                 # the counter: grouped, counted exactly
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert auto_strategy(x) == "grouped_mm"
    assert auto_strategy(torch.empty(4, 16, device="meta")) == "grouped_mm"   # not a CPU
    with torch.no_grad():
        assert auto_strategy(x) == "threads"                    # inference and training alike
    assert auto_strategy(x, THREADS_MIN_ROWS) == "threads"
    assert auto_strategy(x, THREADS_MIN_ROWS - 0.5) == "grouped_mm"  # decoding-sized: products shared by threads
    monkeypatch.setattr(torch.jit, "is_tracing", lambda: True)
    assert auto_strategy(x) == "grouped_mm"


def test_auto_picks_by_the_rows_its_experts_get(two_threads, monkeypatch):
    """A layer's "auto" asks for the routed rows per expert of the call: 8 experts, top-2, so 96 tokens give 24
    rows each (threads) and 88 give 22 (grouped)."""
    import whatruns.nn as wnn
    asked = []
    choose = wnn.auto_strategy
    monkeypatch.setattr(wnn, "auto_strategy", lambda x, rows: asked.append(choose(x, rows)) or asked[-1])
    torch.manual_seed(0)
    layer = MoELayer(16, MoE(8, 2, FFN(8)), "auto")
    with torch.no_grad():
        for n in (96, 88):
            layer(torch.randn(n, 16))
    assert asked == ["threads", "grouped_mm"]


def test_auto_is_the_default_and_counts_as_grouped_mm(two_threads):
    """build's default is "auto": the same function as every named strategy, and under the counter the same
    count as "grouped_mm" (torch alone, uncorrected, too: the book's chapters print those counts)."""
    spec = whatruns.load(bench.hf_config("mixtral", 16) | {"hidden_size": 16, "num_attention_heads": 2,
                                                                "num_key_value_heads": 2, "num_local_experts": 4})
    model, grouped = whatruns.build(spec), whatruns.build(spec, moe_strategy="grouped_mm")
    assert model.moe_layers()[0].strategy == "auto"
    ids = torch.randint(0, bench.VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), grouped(ids))
    for corrected in (True, False):
        assert count_flops(model, ids, corrected=corrected) == count_flops(grouped, ids, corrected=corrected)


def test_the_benchmark_refuses_to_time_different_functions():
    same = torch.ones(3, 4)
    outs = {"whatruns": same, "transformers eager": same + 1e-6, "transformers grouped_mm": same.clone()}
    assert bench.check_equal(outs, "ok") <= 1e-6
    outs["transformers grouped_mm"] = same + 1e-2                 # e.g. a weight copied wrong
    with pytest.raises(ValueError, match="not timing different functions"):
        bench.check_equal(outs, "the model")


def test_the_benchmark_compares_with_transformers_on_the_same_function(monkeypatch):
    """bench.compare on a tiny model: transformers' two implementations and whatruns' default on one set of
    weights, outputs checked equal, every cell timed, ratios the ratios of the medians."""
    tiny = {"hidden_size": 16, "num_attention_heads": 2, "num_key_value_heads": 2, "num_local_experts": 4}
    monkeypatch.setitem(bench.SPECS, "moe", bench.hf_config("mixtral", 16) | tiny)
    monkeypatch.setitem(bench.SPECS, "same FLOPs (a)", bench.hf_config("llama", 32) | tiny)
    monkeypatch.setattr(bench, "D", 16)
    c = bench.compare(repeats=1, train_repeats=1, tokens=(8, 16), train_tokens=(16,))
    assert max(c["max_gap"].values()) <= bench.TOLERANCE and c["strategy"] == "auto"
    kinds = {(x["scope"], x["mode"], x["routing"], x["tokens"]) for x in c["cells"]}
    assert ("model", "train", "skewed", 16) in kinds and ("layer", "forward", "balanced", 8) in kinds
    for cell in c["cells"]:
        med = cell["median_s"]
        assert ("transformers eager" in med) == (cell["mode"] == "forward")
        assert cell["over_dense"] == med["whatruns"] / med["dense (a)"]
        assert cell["over_transformers"] == med["whatruns"] / min(v for k, v in med.items() if k.startswith("transformers"))
    assert c["machine"]["capability"] == torch.backends.cpu.get_cpu_capability()


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


def test_interleaved_times_draws_the_order_afresh_each_round():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abcd"}
    times = bench.interleaved_times(fns, repeats=40, warmup=0)
    rounds = [calls[i:i + 4] for i in range(0, len(calls), 4)]
    assert all(sorted(r) == list("abcd") for r in rounds)                        # each once a round
    assert {r[0] for r in rounds} == set("abcd")                                  # each of them first sometimes
    follows = {(r[i], r[i + 1]) for r in rounds for i in range(3)}
    assert follows == {(x, y) for x in "abcd" for y in "abcd" if x != y}          # and right after each other
    assert {name: len(t) for name, t in times.items()} == dict.fromkeys("abcd", 40)
    assert bench.interleaved_times(fns, repeats=2, warmup=0) and calls[160:] == calls[:8]   # seeded


def _train_step(layer, x):
    layer(x).square().sum().backward()
    return {n: p.grad for n, p in layer.named_parameters() if n.startswith("experts.")}


def test_threads_reuses_gradient_memory_only_when_nothing_else_holds_it(two_threads):
    """Step after step, "threads" writes the experts' gradient into the memory of the last one (a fresh
    allocation must be mapped and zeroed by the OS, page by page); the gradients stay the loop's -- an expert
    chosen in one step and idle in the next gets zeros, not its old gradient -- and memory still held (a
    gradient kept, or accumulated into) is never written."""
    layers = _pair(MoE(8, 1, FFN(8)))
    g = torch.Generator().manual_seed(5)
    xs = [torch.randn(6, 16, generator=g) for _ in range(4)]   # 6 tokens, top-1: some experts idle each step
    idle = [set(range(8)) - set(layers["loop"].route(x)[0].flatten().tolist()) for x in xs]
    assert any(idle[i + 1] - idle[i] for i in range(3))          # an expert chosen in one step, idle in the next
    ptrs, held = [], None
    for i, x in enumerate(xs):
        for layer in layers.values():
            layer.zero_grad(set_to_none=True)
        expected, got = _train_step(layers["loop"], x), _train_step(layers["threads"], x)
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], msg=name)
        ptrs.append(got["experts.up"].untyped_storage().data_ptr())
        if i == 2:  # a reference kept: the next step must not write into it
            held, held_value = got["experts.up"], got["experts.up"].clone()
        del got
    assert ptrs[0] == ptrs[1] == ptrs[2] != ptrs[3]
    assert torch.equal(held, held_value)
    from whatruns.nn import _GRAD_MEMORY, release_gradient_memory
    assert any(p is layers["threads"].experts.up for p in _GRAD_MEMORY.keys())
    release_gradient_memory()
    assert not any(p is layers["threads"].experts.up for p in _GRAD_MEMORY.keys())
    # accumulated over steps (no zero_grad in between): the sum of the loop's, into p.grad's own memory
    for layer in layers.values():
        layer.zero_grad(set_to_none=True)
    for x in xs:
        expected, got = _train_step(layers["loop"], x), _train_step(layers["threads"], x)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)
