"""Is the MoE layer fast? Forward time of a one-layer MoE model against two dense models.

The measuring code of the MoE speed benchmark (chapter "What FLOPs don't count");
``benchmarks/moe_speed.py`` (``make bench``) is its command line, and the chapter runs it live.

The models, one layer each, width D = 512, 8 heads, vocabulary 64, on 8 sequences of 256 tokens,
built with ``whatruns.build`` from Hugging Face configs:

* moe -- Mixtral-type: E = 64 experts of width 1024, top-2;
* (a) -- Llama-type, FFN width 2048: the same active FLOPs per token as the MoE model;
* (b) -- Llama-type, FFN width 65,536: the same total parameters as the MoE model.

Targets: moe / (a) <= 1.2 and (b) / moe >= 10. Other engineers' jobs may share the machine, so the
models run interleaved -- one forward pass of each in turn, ``repeats`` rounds -- and the report
is the ratio of medians, which the shared load inflates alike. Each MoE dispatch strategy is timed
the same way. :func:`run` returns the numbers (the stored run is ``whatruns.data.load("moe_speed_cpu")``),
:func:`report` prints them as a table, and :func:`profile` runs torch's profiler over a few forward
passes of one strategy's MoE model and of (a), and lists each one's operations by their share of the time.

>>> from whatruns import bench
>>> print(bench.report(bench.run(repeats=3)))   # every strategy, (a) and (b): minutes on a CPU  # doctest: +SKIP
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import torch

import whatruns
from .measure import count_flops
from .units import human


D, HEADS, VOCAB, B, T = 512, 8, 64, 8, 256
E, K, F_EXPERT = 64, 2, 1024
F_SAME_FLOPS, F_SAME_PARAMS = K * F_EXPERT, E * F_EXPERT
DEFAULT_STRATEGIES = ("threads", "loop", "grouped_mm", "gather", "onehot")  # "dense" (every expert on every token) is slower still


def hf_config(model_type: str, ffn_width: int) -> dict:
    """A one-layer Hugging Face config of the benchmark's sizes."""
    config = dict(model_type=model_type, vocab_size=VOCAB, hidden_size=D, num_hidden_layers=1,
                  num_attention_heads=HEADS, num_key_value_heads=HEADS, intermediate_size=ffn_width)
    if model_type == "mixtral":
        config.update(num_local_experts=E, num_experts_per_tok=K)
    return config


SPECS = {
    "moe": hf_config("mixtral", F_EXPERT),
    "same FLOPs (a)": hf_config("llama", F_SAME_FLOPS),
    "same params (b)": hf_config("llama", F_SAME_PARAMS),
}


DENSE = ("same FLOPs (a)", "same params (b)")


def models(strategies=DEFAULT_STRATEGIES, dtype=torch.float32, device: str = "cpu", dense=DENSE) -> dict:
    """Name -> (model, spec, strategy): the MoE model, built once (``whatruns.build``'s seed) and run with each
    strategy in turn, since they compute the same function from the same weights, then the dense models
    (strategy None)."""
    out = {}
    if strategies:
        spec = whatruns.load(SPECS["moe"])
        moe = whatruns.build(spec, moe_strategy=strategies[0], dtype=dtype).to(device).eval()
        out.update({f"moe/{s}": (moe, spec, s) for s in strategies})
    for name in dense:
        spec = whatruns.load(SPECS[name])
        out[name] = whatruns.build(spec, dtype=dtype).to(device).eval(), spec, None
    return out


def forward(model, strategy, ids):
    """One forward pass of a model of :func:`models`, its MoE layers set to ``strategy`` first."""
    for layer in model.moe_layers() if strategy else ():
        layer.strategy = strategy
    return model(ids)


def interleaved_times(fns: dict, repeats: int, warmup: int = 1, sync=lambda: None) -> dict:
    """Name -> list of seconds: each round calls every function once, in turn."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return times


def run(strategies=None, repeats: int = 7, threads: int = None, dtype=torch.float32, device: str = "cpu",
        flops: bool = True, batch: int = B, dense=DENSE, built: dict = None) -> dict:
    """Time every model interleaved on ``batch`` sequences; return medians, ratios (for the
    dense models timed) and the FLOPs torch counts (if ``flops``). ``built`` (from :func:`models`)
    reuses models already built, of which ``strategies`` and ``dense`` name the ones to run."""
    if threads:
        torch.set_num_threads(threads)
    strategies = list(strategies or DEFAULT_STRATEGIES)
    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB, (batch, T), device=device)
    if built is None:
        built = models(strategies, dtype, device, dense)
    built = {name: built[name] for name in [f"moe/{s}" for s in strategies] + list(dense)}
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.no_grad():
        fns = {name: (lambda m=m, s=s: forward(m, s, ids)) for name, (m, _, s) in built.items()}
        times = interleaved_times(fns, repeats, sync=sync)
        counted = ({name: count_flops(lambda m=m, s=s: forward(m, s, ids)) for name, (m, _, s) in built.items()}
                   if flops and device == "cpu" else {})
        # the busiest expert's load (every strategy routes alike): the padding the padded strategies pay for
        layer = built[f"moe/{strategies[0]}"][0].moe_layers()[0]
        loads = layer.load.tolist()
    median = {name: statistics.median(t) for name, t in times.items()}
    a, b = median.get("same FLOPs (a)"), median.get("same params (b)")
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
                    "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
                    "torch": torch.__version__, "dtype": str(dtype).replace("torch.", "")},
        "sizes": {"D": D, "heads": HEADS, "vocab": VOCAB, "B": batch, "T": T, "E": E, "k": K, "F_expert": F_EXPERT,
                  "F_same_flops": F_SAME_FLOPS, "F_same_params": F_SAME_PARAMS},
        "params": {name: sum(p.numel() for p in m.parameters()) for name, (m, _, _) in built.items()},
        "count_flops_per_token": {name: whatruns.count(spec, seq_len=T).flops_per_token
                                  for name, (_, spec, _) in built.items()},
        "measured_flops": counted,
        "max_load": max(loads), "mean_load": batch * T * K / E,
        "repeats": repeats,
        "median_s": median,
        "times_s": times,
        "moe_over_a": {s: median[f"moe/{s}"] / a for s in strategies} if a else {},
        "b_over_moe": {s: b / median[f"moe/{s}"] for s in strategies} if b else {},
    }
    return result


def report(r: dict) -> str:
    """A run of every model (:func:`run` with (a) and (b)) as a table, and its best strategy against the targets."""
    m = r["machine"]
    lines = [f"{m['device']} ({m['processor']}), {m['threads']} threads, torch {m['torch']}, {m['dtype']}; "
             f"load average {m['loadavg'][0]:.1f} on {m['cpus']} cpus" if m["loadavg"] else
             f"{m['device']}, {m['threads']} threads, torch {m['torch']}, {m['dtype']}",
             f"B={r['sizes']['B']} x T={r['sizes']['T']} tokens; {r['repeats']} interleaved rounds; "
             f"busiest expert {r['max_load']} rows (mean {r['mean_load']:.0f})",
             f"{'model':22s} {'params':>8s} {'GFLOP':>7s} {'median s':>9s} {'/ (a)':>7s} {'(b) /':>7s}"]
    a, b = r["median_s"]["same FLOPs (a)"], r["median_s"]["same params (b)"]
    for name, t in r["median_s"].items():
        fl = r["measured_flops"].get(name)
        lines.append(f"{name:22s} {human(r['params'][name]):>8s} "
                     f"{fl / 1e9 if fl else float('nan'):7.1f} {t:9.3f} {t / a:7.2f} {b / t:7.1f}")
    best = min(r["moe_over_a"], key=r["moe_over_a"].get)
    lines.append(f"best strategy: {best}: moe / (a) = {r['moe_over_a'][best]:.2f} (target <= 1.2), "
                 f"(b) / moe = {r['b_over_moe'][best]:.1f} (target >= 10)")
    return "\n".join(lines)


def profile(strategy: str, repeats: int = 3, threads: int = None, rows: int = 12) -> str:
    """torch's profiler over ``repeats`` forward passes of the MoE model (``strategy``) and of (a),
    on all threads: each model's operations by self time per pass (summed over threads), largest
    first, with the FLOPs per second of an operation's own time (for "threads" the time of the one
    thread it ran on; for the other strategies an operation spans all threads). The profiler slows
    the passes down; the wall time printed is measured without it."""
    from torch.profiler import profile as torch_profile
    from torch._C._profiler import _ExperimentalConfig
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB, (B, T))
    built = models([strategy], torch.float32, "cpu", dense=("same FLOPs (a)",))
    lines = []
    with torch.no_grad():
        for name, (m, _, s) in built.items():
            wall = statistics.median(interleaved_times({name: lambda: forward(m, s, ids)}, repeats)[name])
            with torch_profile(with_flops=True,
                               experimental_config=_ExperimentalConfig(profile_all_threads=True)) as prof:
                for _ in range(repeats):
                    m(ids)
            events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
            total = sum(e.self_cpu_time_total for e in events) / repeats / 1e6
            lines.append(f"{name}: {wall * 1e3:.0f} ms per pass, {torch.get_num_threads()} threads; "
                         f"profiled: {total * 1e3:.0f} ms of operations, summed over threads")
            for e in events[:rows]:
                t = e.self_cpu_time_total / repeats / 1e6
                rate = f"{e.flops / repeats / t / 1e9:6.1f} GFLOP/s" if e.flops else ""
                lines.append(f"  {e.key:50s} {t * 1e3:8.1f} ms {100 * t / total:5.1f}% {e.count // repeats:5d} calls  {rate}")
    return "\n".join(lines)
