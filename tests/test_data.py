"""The stored results (whatruns.data) against the code that wrote them.

The experiment chapters draw their figures from sweeps too long to re-run in a test, and chapter 7 from a
benchmark run. Each file must still be what the current code would write: the sweep's settings and seeds
(``scripts/experiments.py``), every run's configuration and counts, the task definitions, and a short
re-run of one run per sweep; the benchmark's sizes, models, FLOPs and routing (``whatruns.bench``). A
change to any of them that is not followed by ``make experiments`` (or a new benchmark run) fails here.
"""

import importlib.util
import json
import math
import pathlib
import statistics
import pytest
import torch

import whatruns
from whatruns import bench, data
from whatruns.count import ffn_flops, onehot_dispatch_flops
from whatruns.tasks import ModularPairs, OrderTwoLanguage, ToyConfig, train_language, train_pairs

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def experiments():
    spec = importlib.util.spec_from_file_location("experiments", ROOT / "scripts" / "experiments.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_loader_finds_every_file_and_names_the_missing_one():
    assert data.names() == ["like_with_like", "moe_speed_cpu", "resting_parameters"]
    for name in data.names():
        assert data.load(name) == json.loads(data.path(name).read_text())
        assert data.load(name) is not data.load(name)   # a fresh copy: a chapter may change its own
    with pytest.raises(KeyError, match="did you mean 'like_with_like'"):
        data.path("like_with_lik")


def test_the_package_ships_the_files():
    """pyproject's package-data names the folder the loader reads: a wheel carries every stored result."""
    text = (ROOT / "pyproject.toml").read_text()
    assert '"data/*.json"' in text
    assert data.path("like_with_like").parent == pathlib.Path(whatruns.__file__).parent / "data"


def _check_curve(run, every=100):
    steps = [c[0] for c in run["curve"]]
    assert steps == list(range(every, run["steps"] + 1, every)), run["name"]


# ---------------------------------------------------------------------------------------------
# chapter 6

def test_like_with_like_is_the_sweep_the_script_defines(experiments):
    d = data.load("like_with_like")
    S = experiments.LIKE
    assert d["settings"] == S and d["seeds"] == list(experiments.SEEDS)
    jobs = [(cfg, seed) for cfg in experiments.like_configs() for seed in experiments.SEEDS]
    assert len(d["runs"]) == len(jobs)
    floor = round(OrderTwoLanguage(S["vocab"]).floor, 4)   # the task: its entropy, from its definition
    for (cfg, seed), r in zip(jobs, d["runs"]):
        # the stored configuration, read by the current code, is the configuration the script defines (the
        # sweep predates ToyConfig's activation field, whose default is the ReLU these runs used)
        assert (r["name"], r["seed"], ToyConfig(**r["config"])) == (cfg.name, seed, cfg)
        assert {k: r[k] for k in cfg.counts()} == cfg.counts()      # the counts of the current formulas
        assert (r["steps"], r["batch"], r["floor"]) == (S["steps"], S["batch"], floor)
        _check_curve(r)
        assert r["excess"] == r["curve"][-1][1] > 0


def test_like_with_like_rerun(experiments):
    """The first 100 steps of the base model, seed 0, land on the stored curve (the chapter's tolerance)."""
    d, S = data.load("like_with_like"), experiments.LIKE
    cfg = ToyConfig(S["vocab"], S["width"], S["dense_widths"][0])
    live = train_language(cfg, OrderTwoLanguage(S["vocab"]), seed=0, steps=100, batch=S["batch"], lr=S["lr"],
                          balance=S["balance"])
    stored = next(r for r in d["runs"] if r["name"] == cfg.name and r["seed"] == 0)
    assert abs(live["curve"][0][1] - stored["curve"][0][1]) <= 0.005


# ---------------------------------------------------------------------------------------------
# chapter 8

def test_resting_parameters_is_the_sweep_the_script_defines(experiments):
    d = data.load("resting_parameters")
    S = experiments.RESTING
    assert d["settings"] == S and d["seeds"] == list(experiments.SEEDS)
    # the tasks as the current code defines them: the pairs, labels and split the runs trained on
    assert d["task_fingerprints"] == experiments.resting_tasks()
    jobs = experiments.resting_runs()
    assert len(d["runs"]) == len(jobs)
    tasks = {}
    for (cfg, rule, frac, seed, steps), r in zip(jobs, d["runs"]):
        task = tasks.setdefault((rule, frac, seed), ModularPairs(S["p"], rule, frac, seed=seed))
        assert (r["name"], r["rule"], r["seed"], r["steps"], ToyConfig(**r["config"])) == (cfg.name, rule, seed, steps, cfg)
        assert r["train_fraction"] == experiments.rounded(len(task.train) / S["p"] ** 2)   # stored to 4 decimals
        assert {k: r[k] for k in cfg.counts()} == cfg.counts()
        _check_curve(r)
        assert (r["train_acc"], r["test_acc"]) == tuple(r["curve"][-1][1:])
        if cfg.is_moe:
            assert sum(r["train_load"]) == len(task.train)             # every training pair went somewhere
            assert len(r["expert_test_acc"]) == (cfg.experts if len(task.test) else 0)


def test_resting_parameters_keeps_its_earlier_runs_and_has_every_arm(experiments):
    """The runs added with issue 14 (the ReLU trial, the wide-expert, wide-shared and expert-count arms) come after
    the earlier ones, so those keep their place; every arm has each seed at its data fraction, and the ReLU runs
    are ReLU."""
    d, S = data.load("resting_parameters"), experiments.RESTING
    jobs = experiments.resting_runs()
    earlier = experiments.resting_runs({k: v for k, v in S.items()} | {"relu": {**S["relu"], "dense_widths": []},
                                                                        "arms": []})
    assert jobs[:len(earlier)] == earlier and len(jobs) > len(earlier)
    added = d["runs"][len(earlier):]
    relu = [r for r in added if r["config"]["activation"] == S["relu"]["activation"]]
    assert len(relu) == len(S["relu"]["dense_widths"]) * len(experiments.SEEDS)
    assert all(r["steps"] == S["relu"]["steps"] and r["config"]["experts"] == 0 for r in relu)
    for arm in S["arms"]:
        n = len(arm["dense_widths"]) + len(arm["moe"]) + len(arm["shared"])
        at = [r for r in added if r["config"]["activation"] == S["activation"]
              and abs(r["train_fraction"] - arm["fraction"]) < 1e-3]
        assert len(at) == n * len(experiments.SEEDS)
        assert all(r["rule"] == "add" and r["steps"] == S["steps"] for r in at)


def test_resting_parameters_rerun(experiments):
    """The first 200 steps of the four-expert MoE on the rule, seed 0, land on the stored curve."""
    d, S = data.load("resting_parameters"), experiments.RESTING
    cfg = ToyConfig(S["p"], S["width"], S["expert_width"], experts=4, classes=S["p"], activation=S["activation"])
    live = train_pairs(cfg, ModularPairs(S["p"], "add", 0.5, seed=0), seed=0, steps=200, lr=S["lr"],
                       weight_decay=S["weight_decay"]["add"], balance=S["balance"])
    stored = next(r for r in d["runs"] if r["name"] == cfg.name and r["rule"] == "add" and r["seed"] == 0
                  and r["steps"] == S["steps"] and abs(r["train_fraction"] - 0.5) < 1e-3)
    for (step, tr, te), (s_step, s_tr, s_te) in zip(live["curve"], stored["curve"]):
        assert step == s_step and abs(tr - s_tr) <= 0.05 and abs(te - s_te) <= 0.05


# ---------------------------------------------------------------------------------------------
# chapter 7: the benchmark

@pytest.fixture(scope="module")
def stored_bench():
    return data.load("moe_speed_cpu")


def test_moe_speed_is_the_benchmark_of_the_library(stored_bench):
    specs = {name: whatruns.load(cfg) for name, cfg in bench.SPECS.items()}
    counts = {name: whatruns.count(s, seq_len=bench.T) for name, s in specs.items()}
    N = bench.B * bench.T
    moe = specs["moe"].moe
    for r in stored_bench:
        assert r["sizes"] == {"D": bench.D, "heads": bench.HEADS, "vocab": bench.VOCAB, "B": bench.B, "T": bench.T,
                              "E": bench.E, "k": bench.K, "F_expert": bench.F_EXPERT,
                              "F_same_flops": bench.F_SAME_FLOPS, "F_same_params": bench.F_SAME_PARAMS}
        models = list(r["median_s"])
        strategies = [m.split("/")[1] for m in models if m.startswith("moe/")]
        assert strategies == list(bench.DEFAULT_STRATEGIES)
        spec_of = {m: "moe" if m.startswith("moe/") else m for m in models}
        assert r["params"] == {m: counts[spec_of[m]].total_params for m in models}
        assert r["count_flops_per_token"] == {m: counts[spec_of[m]].flops_per_token for m in models}
        # FLOPs torch counted: the exact strategies and the dense models do what count() says; the padded
        # strategies run every expert on the busiest expert's load, one-hot adds its two dispatch einsums
        exact = counts["moe"].flops_per_token * N
        padded = exact - N * bench.K * ffn_flops(bench.D, moe.expert) + bench.E * r["max_load"] * ffn_flops(bench.D, moe.expert)
        expected = {"moe/auto": exact, "moe/threads": exact, "moe/loop": exact, "moe/grouped_mm": exact, "moe/gather": padded,
                    "moe/onehot": padded + 2 * onehot_dispatch_flops(N, bench.E, r["max_load"], bench.D),
                    "same FLOPs (a)": counts["same FLOPs (a)"].flops_per_token * N,
                    "same params (b)": counts["same params (b)"].flops_per_token * N}
        assert r["measured_flops"] == expected
        assert r["mean_load"] == N * bench.K / bench.E
        # the report's numbers are the medians of its own timings
        assert all(len(t) == r["repeats"] for t in r["times_s"].values())
        assert r["median_s"] == {m: statistics.median(t) for m, t in r["times_s"].items()}
        a, b = r["median_s"]["same FLOPs (a)"], r["median_s"]["same params (b)"]
        assert r["moe_over_a"] == {s: r["median_s"][f"moe/{s}"] / a for s in strategies}
        assert r["b_over_moe"] == {s: b / r["median_s"][f"moe/{s}"] for s in strategies}


def test_moe_speed_against_transformers_is_the_comparison_of_the_library(stored_bench):
    """The comparison with transformers (bench.compare): the default strategy, every cell the current code
    times, the outputs found equal before timing, the ratios those of the medians of its own timings."""
    assert "peers" in stored_bench[0] and not any("peers" in r for r in stored_bench[1:])  # the first run's threads
    for r in stored_bench[:1]:
        c = r["peers"]
        assert c["strategy"] == "auto" and c["tolerance"] == bench.TOLERANCE
        assert c["machine"]["threads"] == r["machine"]["threads"] and c["machine"]["capability"]
        assert max(c["max_gap"].values()) <= bench.TOLERANCE
        kinds = [(x["scope"], x["mode"], x["routing"], x["tokens"]) for x in c["cells"]]
        expected = []
        for n in sorted(set(bench.PEER_TOKENS) | set(bench.TRAIN_TOKENS)):
            for scope, routing in (("model", "skewed"), ("layer", "skewed"), ("layer", "balanced")):
                expected += [(scope, mode, routing, n) for mode, tokens in (("forward", bench.PEER_TOKENS),
                                                                            ("train", bench.TRAIN_TOKENS)) if n in tokens]
        assert kinds == expected
        for cell in c["cells"]:
            reps = c["repeats"] if cell["mode"] == "forward" else c["train_repeats"]
            names = [n for n in bench.PEERS if not (cell["mode"] == "train" and n == "transformers eager")]
            assert list(cell["times_s"]) == names and all(len(t) == reps for t in cell["times_s"].values())
            med = cell["median_s"]
            assert med == {n: statistics.median(t) for n, t in cell["times_s"].items()}
            assert cell["over_dense"] == med["whatruns"] / med["dense (a)"]
            assert cell["over_transformers"] == med["whatruns"] / med[cell["best_transformers"]]
            assert med[cell["best_transformers"]] == min(v for n, v in med.items() if n.startswith("transformers"))
            assert cell["mean"] == cell["tokens"] * bench.K / bench.E


def test_moe_speed_routing_is_the_current_models(stored_bench):
    """The busiest expert's load, which sets the padded strategies' FLOPs, comes from the model's seeded
    initialisation and the benchmark's seeded tokens: re-derived here from the current code."""
    torch.manual_seed(0)
    ids = torch.randint(0, bench.VOCAB, (bench.B, bench.T))   # as bench.run draws them
    model = whatruns.build(whatruns.load(bench.SPECS["moe"]), moe_strategy="loop").eval()
    with torch.no_grad():
        model(ids)
    load = model.moe_layers()[0].load
    assert int(load.sum()) == bench.B * bench.T * bench.K
    for r in stored_bench:   # within 1%: a token near a tie between two experts may go either way on another CPU
        assert math.isclose(int(load.max()), r["max_load"], rel_tol=0.01)
