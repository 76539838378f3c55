"""Run the experiment chapters' full sweeps and store their results as package data (`make experiments`).

    python scripts/experiments.py                 # both sweeps, all cores
    python scripts/experiments.py like --jobs 4   # only chapter 6's sweep

like     -> src/whatruns/data/like_with_like.json       (chapter 6: dense vs MoE on OrderTwoLanguage)
resting  -> src/whatruns/data/resting_parameters.json   (chapter 8: memorization vs a rule on ModularPairs)

The chapters read them with ``whatruns.data.load(name)``, so a chapter downloaded alone finds them.
Each run is deterministic (seeded, one thread, deterministic kernels); runs go to a process pool.
The notebooks re-run a slice of these runs live and check them against the files;
``tests/test_data.py`` checks each file against this script (settings, seeds, the runs' configurations
and counts, the task definitions) and re-runs a short slice.
The configurations live here and in the notebooks only through the files: a notebook reads
`settings` from the file it checks.
"""

import argparse
import json
import os
import pathlib
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from whatruns.tasks import ModularPairs, OrderTwoLanguage, ToyConfig, train_language, train_pairs

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / "src" / "whatruns" / "data"   # package data: whatruns.data.load(name)
CACHE = ROOT / "build" / "experiments"  # git-ignored
SEEDS = (0, 1, 2)

LIKE = {"vocab": 64, "width": 64, "steps": 1500, "batch": 512, "lr": 3e-3, "balance": 0.01,
        "dense_widths": [64, 128, 256, 512, 1024],   # 1024: the dense twin of E=16 (equal FFN parameters)
        "expert_width": 64, "experts": [2, 4, 8, 16],
        # granularity: (E, expert width, top-k) at E=8x64 top-1's active FLOPs and stored FFN parameters
        "granular": [[16, 32, 2], [32, 16, 4], [64, 8, 8]]}

RESTING = {"p": 59, "width": 32, "activation": "gelu", "steps": 1500, "lr": 3e-3, "balance": 0.01,
           "weight_decay": {"add": 1.0, "random": 0.0},
           "dense_widths": [16, 32, 64], "expert_width": 16, "experts": [2, 4],
           "shared": [[4, 16]],                     # (E, shared width): the DeepSeekMoE arm
           "tasks": [["add", 0.5], ["random", 1.0]],
           "fraction_sweep": {"fraction": 0.8, "names": ["dense F=16", "MoE E=4x16"]},
           "split_control": [4],                    # dense F=16 trained on 1/E of the add@0.5 pairs
           "long_steps": 3000, "long": [[4, 16]],   # (E, F) trained 2x longer on add@0.5
           # the first trial's setting, stored (dense models, ReLU, fewer steps, add@0.5)
           "relu": {"activation": "relu", "steps": 1000, "dense_widths": [16, 32, 64], "task": ["add", 0.5]},
           # the arms that bound the claim, on the rule: experts as wide as the dense models that learn it,
           # shared experts that wide beside 4x16 routed ones, and expert count at fixed expert width
           "arms": [{"fraction": 0.8, "dense_widths": [32, 64],
                     "moe": [[2, 16], [4, 32], [4, 64], [8, 16], [16, 16]],   # (E, F)
                     "shared": [[4, 16, 16], [4, 16, 32], [4, 16, 64]]},      # (E, F, shared width)
                    {"fraction": 0.5, "dense_widths": [],
                     "moe": [[4, 32], [4, 64], [8, 16], [16, 16]],
                     "shared": [[4, 16, 32], [4, 16, 64]]}]}


def rounded(x, digits=4):
    if isinstance(x, float):
        return round(x, digits)
    if isinstance(x, (list, tuple)):
        return [rounded(v, digits) for v in x]
    if isinstance(x, dict):
        return {k: rounded(v, digits) for k, v in x.items()}
    return x


def like_configs(s=LIKE):
    dense = [ToyConfig(s["vocab"], s["width"], F) for F in s["dense_widths"]]
    moe = [ToyConfig(s["vocab"], s["width"], s["expert_width"], experts=E) for E in s["experts"]]
    granular = [ToyConfig(s["vocab"], s["width"], F, experts=E, top_k=k) for E, F, k in s["granular"]]
    return dense + moe + granular


def run_like(args):
    cfg, seed, s = args
    task = OrderTwoLanguage(s["vocab"])
    r = train_language(cfg, task, seed=seed, steps=s["steps"], batch=s["batch"], lr=s["lr"], balance=s["balance"])
    r["floor"] = task.floor
    return rounded(r)


def resting_runs(s=RESTING):
    """(config, rule, train fraction, seed, steps) for every run of the chapter 8 sweep."""
    p, D, Fe, act = s["p"], s["width"], s["expert_width"], s["activation"]
    cfgs = ([ToyConfig(p, D, F, classes=p, activation=act) for F in s["dense_widths"]]
            + [ToyConfig(p, D, Fe, experts=E, classes=p, activation=act) for E in s["experts"]]
            + [ToyConfig(p, D, Fe, experts=E, shared_width=S, classes=p, activation=act) for E, S in s["shared"]])
    steps = s["steps"]
    runs = [(c, rule, frac, seed, steps) for rule, frac in s["tasks"] for c in cfgs for seed in SEEDS]
    sweep = s["fraction_sweep"]
    runs += [(c, "add", sweep["fraction"], seed, steps) for c in cfgs if c.name in sweep["names"] for seed in SEEDS]
    small = ToyConfig(p, D, Fe, classes=p, activation=act)
    runs += [(small, "add", 0.5 / E, seed, steps) for E in s["split_control"] for seed in SEEDS]
    runs += [(ToyConfig(p, D, F, experts=E, classes=p, activation=act), "add", 0.5, seed, s["long_steps"])
             for E, F in s["long"] for seed in SEEDS]
    # added with issue 14, after every earlier run (whose order, settings and results are unchanged)
    relu = s["relu"]
    runs += [(ToyConfig(p, D, F, classes=p, activation=relu["activation"]), *relu["task"], seed, relu["steps"])
             for F in relu["dense_widths"] for seed in SEEDS]
    for arm in s["arms"]:
        cfgs = ([ToyConfig(p, D, F, classes=p, activation=act) for F in arm["dense_widths"]]
                + [ToyConfig(p, D, F, experts=E, classes=p, activation=act) for E, F in arm["moe"]]
                + [ToyConfig(p, D, F, experts=E, shared_width=S, classes=p, activation=act)
                   for E, F, S in arm["shared"]])
        runs += [(c, "add", arm["fraction"], seed, steps) for c in cfgs for seed in SEEDS]
    return runs


def resting_tasks(s=RESTING):
    """The distinct tasks of the chapter 8 sweep, in the order the runs first use them, each with its
    fingerprint (the pairs, labels and split: ``ModularPairs.fingerprint``)."""
    seen = {}
    for _, rule, frac, seed, _ in resting_runs(s):
        if (rule, frac, seed) not in seen:
            seen[(rule, frac, seed)] = ModularPairs(s["p"], rule, frac, seed=seed).fingerprint()
    return [{"rule": r, "train_fraction": f, "seed": seed, "fingerprint": fp} for (r, f, seed), fp in seen.items()]


def run_resting(args):
    cfg, rule, frac, seed, steps, s = args
    task = ModularPairs(s["p"], rule, frac, seed=seed)
    r = train_pairs(cfg, task, seed=seed, steps=steps, lr=s["lr"], weight_decay=s["weight_decay"][rule],
                    balance=s["balance"])
    return rounded(r)


def sweep(fn, jobs, n, cache):
    """Run ``fn`` on every job in a pool of ``n`` processes. Each finished run is appended to
    ``cache`` (a JSON-lines file under build/), so an interrupted sweep resumes where it stopped."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            key, r = json.loads(line)
            done[key] = r
    keys = [repr(j) for j in jobs]  # the configuration, seed and settings of each run
    todo = [(k, j) for k, j in zip(keys, jobs) if k not in done]
    print(f"  {len(jobs) - len(todo)} of {len(jobs)} runs cached in {cache}", flush=True)
    start = time.perf_counter()
    with ProcessPoolExecutor(n) as pool, cache.open("a") as f:
        for i, (key, r) in enumerate(zip((k for k, _ in todo), pool.map(fn, [j for _, j in todo])), 1):
            done[key] = r
            f.write(json.dumps([key, r]) + "\n")
            f.flush()
            print(f"  {i}/{len(todo)} {r['name']} seed {r['seed']} ({time.perf_counter() - start:.0f} s)", flush=True)
    return [done[k] for k in keys]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", nargs="*", default=["like", "resting"], choices=["like", "resting"])
    ap.add_argument("--jobs", type=int, default=os.cpu_count())
    a = ap.parse_args()
    DATA.mkdir(parents=True, exist_ok=True)
    meta = {"seeds": list(SEEDS), "python": sys.version.split()[0], "torch": torch.__version__,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.system()}"}
    if "like" in a.which:
        print("like with like:", flush=True)
        runs = sweep(run_like, [(c, seed, LIKE) for c in like_configs() for seed in SEEDS], a.jobs,
                     CACHE / "like_with_like.jsonl")
        (DATA / "like_with_like.json").write_text(json.dumps({**meta, "settings": LIKE, "runs": runs}, indent=1))
    if "resting" in a.which:
        print("resting parameters:", flush=True)
        runs = sweep(run_resting, [(*r, RESTING) for r in resting_runs()], a.jobs,
                     CACHE / "resting_parameters.jsonl")
        (DATA / "resting_parameters.json").write_text(
            json.dumps({**meta, "settings": RESTING, "task_fingerprints": resting_tasks(), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
