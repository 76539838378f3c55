"""Is the MoE layer fast? The command line of the MoE speed benchmark, whose code is ``whatruns.bench``.

    .venv/bin/python benchmarks/moe_speed.py                 # or: make bench
    .venv/bin/python benchmarks/moe_speed.py --threads 2 1 --repeats 9 --json out.json
    .venv/bin/python benchmarks/moe_speed.py --device cuda --dtype bfloat16
    .venv/bin/python benchmarks/moe_speed.py --profile threads    # where the time goes, op by op
    .venv/bin/python benchmarks/moe_speed.py --no-peers           # the strategies alone, without transformers

The stored run the chapter "What FLOPs don't count" reads is ``--threads 0 1 --json
src/whatruns/data/moe_speed_cpu.json`` (``whatruns.data.load("moe_speed_cpu")``). The models, the
targets and the interleaved timing are described in ``whatruns.bench``. Prints a table; ``--json``
also writes the numbers. ``--profile STRATEGY`` instead runs torch's profiler (every thread) over a
few forward passes of that MoE model and of (a), and prints each one's operations by their share of
the time.

The first run (the first of ``--threads``) also compares the library's default strategy with transformers' ``MixtralForCausalLM`` and its MoE
block, experts ``"eager"`` and ``"grouped_mm"`` (the same weights; outputs checked equal before any timing),
and with the dense model (a): whole model and MoE layer alone, forward and a training step, skewed and
balanced routing, 8 to 4,096 tokens (``whatruns.bench.compare``), and prints issue 13's targets.
"""

from __future__ import annotations

import argparse
import json

import torch

from whatruns import bench
from whatruns.nn import AUTO, SPEED_STRATEGIES, STRATEGIES


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--threads", type=int, nargs="*", default=[0],
                   help="torch intra-op threads, one run per value (0: torch's default)")
    p.add_argument("--strategies", nargs="*", default=None, choices=(AUTO,) + SPEED_STRATEGIES + STRATEGIES)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16", "float64"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--no-peers", action="store_true", help="skip the comparison with transformers")
    p.add_argument("--profile", default=None, metavar="STRATEGY", choices=(AUTO,) + SPEED_STRATEGIES + STRATEGIES,
                   help="profile this MoE strategy and (a) instead")
    args = p.parse_args(argv)
    if args.profile:
        print(bench.profile(args.profile, threads=args.threads[0] or None))
        return
    default_threads = torch.get_num_threads()
    results = []
    for threads in args.threads:
        r = bench.run(args.strategies, args.repeats, threads or default_threads, getattr(torch, args.dtype), args.device)
        print(bench.report(r) + "\n", flush=True)
        if not args.no_peers and not results and args.device == "cpu" and args.dtype == "float32":  # first run only
            r["peers"] = bench.compare(threads=threads or default_threads)
            print(bench.report_compare(r["peers"]) + "\n", flush=True)
        results.append(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
