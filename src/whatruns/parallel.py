"""Expert parallelism run for real: an MoE layer's experts split over processes, tokens moved by all-to-all.

Chapter "What FLOPs don't count". :func:`expert_parallel` starts ``world`` processes on this
machine (``torch.distributed``, gloo backend, over 127.0.0.1 only). Each rank holds 1/world of
the tokens and E/world of the experts (and a copy of the router). One MoE layer then runs as
GShard and Switch run it:

1. route: each rank picks k experts for each of its tokens;
2. dispatch: ``all_to_all_single`` sends each routed row (D activations) to the rank holding
   its expert -- the first all-to-all;
3. the rank's experts run on the rows they received;
4. combine: the second all-to-all sends the outputs back the way they came, and each rank sums
   its tokens' k outputs with the router's weights.

The result must equal the single-process :class:`whatruns.nn.MoELayer`'s output, and the bytes
each rank handed to the all-to-alls for other ranks are counted against
:func:`whatruns.memory.all_to_all_bytes`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from .nn import MoELayer
from .spec import MoE, SpecError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, folder, timeout):
    torch.set_num_threads(1)  # world processes share the machine's cores
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout))
    try:
        setup = torch.load(os.path.join(folder, "setup.pt"), weights_only=False)
        D, m, x = setup["D"], setup["moe"], setup["x"]
        layer = MoELayer(D, m, "loop")
        layer.load_state_dict(setup["state"])
        with torch.no_grad():
            out = _expert_parallel_forward(layer, x.chunk(world)[rank], rank, world)
        torch.save(out, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _exchange(rows: torch.Tensor, send_counts):
    """One all-to-all: ``rows`` sorted by destination rank, ``send_counts[r]`` of them for rank r.
    Returns the rows received and how many came from each rank."""
    world = len(send_counts)
    recv_counts = torch.empty(world, dtype=torch.long)
    dist.all_to_all_single(recv_counts, torch.tensor(send_counts, dtype=torch.long))  # sizes first
    recv_counts = recv_counts.tolist()
    received = rows.new_empty((sum(recv_counts), *rows.shape[1:]))
    dist.all_to_all_single(received, rows.contiguous(), recv_counts, list(send_counts))
    return received, recv_counts


def _expert_parallel_forward(layer: MoELayer, x: torch.Tensor, rank: int, world: int) -> dict:
    """This rank's share of one expert-parallel MoE forward pass on its tokens ``x`` (n, D)."""
    E, k = layer.m.experts, layer.m.top_k
    per_rank = E // world
    mine = range(rank * per_rank, (rank + 1) * per_rank)
    idx, w, _ = layer.route(x)
    expert, token, weight = idx.reshape(-1), torch.arange(len(x)).repeat_interleave(k), w.reshape(-1)
    order = torch.argsort(expert // per_rank, stable=True)  # group the routed rows by destination rank
    expert, token, weight = expert[order], token[order], weight[order]
    send = torch.bincount(expert // per_rank, minlength=world).tolist()
    row_bytes = x.shape[1] * x.element_size()

    t0 = time.perf_counter()
    rows, recv = _exchange(x[token], send)  # dispatch: the activations
    their_expert, _ = _exchange(expert, send)  # and which expert each row is for (metadata)
    t1 = time.perf_counter()
    out = torch.zeros_like(rows)
    for e in mine:
        sel = (their_expert == e).nonzero().squeeze(1)
        if len(sel):
            out[sel] = layer.experts.one(e, rows[sel])
    t2 = time.perf_counter()
    back, _ = _exchange(out, recv)  # combine: the outputs return the way the rows came
    t3 = time.perf_counter()
    y = torch.zeros_like(x).index_add_(0, token, back * weight[:, None])
    if layer.shared is not None:
        s = layer.shared(x)
        y = y + (torch.sigmoid(layer.shared_gate(x)) * s if layer.shared_gate is not None else s)
    return {
        "y": y,
        "dispatch_bytes": row_bytes * (sum(send) - send[rank]),  # rows this rank sent to other ranks
        "combine_bytes": row_bytes * (sum(recv) - recv[rank]),
        "metadata_bytes": expert.element_size() * (sum(send) - send[rank]),
        "rows_kept": send[rank],
        "seconds": {"dispatch": t1 - t0, "experts": t2 - t1, "combine": t3 - t2},
    }


def expert_parallel(D: int, moe: MoE, tokens: int, world: int = 2, seed: int = 0, timeout: float = 60.0) -> dict:
    """Run one MoE layer (width ``D``, spec ``moe``) on ``tokens`` random tokens split over
    ``world`` gloo processes on 127.0.0.1, experts sharded E/world per rank.

    Returns a dict: ``max_error`` (largest difference from the single-process layer's output),
    ``sent`` (per rank: bytes of activations its dispatch and its combine sent to other ranks),
    ``crossing_rows`` (routed rows whose expert lives on another rank, from the routing itself),
    ``formula_bytes`` (:func:`whatruns.memory.all_to_all_bytes` for one all-to-all, all ranks,
    uniform routing), ``seconds`` (per rank, wall-clock of each step) and the ``output``.
    Raises if the processes do not finish within ``timeout`` seconds."""
    from .memory import all_to_all_bytes

    if moe.experts % world:
        raise SpecError(f"{moe.experts} experts cannot be split evenly over {world} ranks")
    if moe.capacity_factor is not None:
        raise SpecError("expert_parallel runs dropless layers only (capacity_factor None)")
    if tokens % world:
        raise SpecError(f"{tokens} tokens cannot be split evenly over {world} ranks")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = MoELayer(D, moe, "loop")
        x = torch.randn(tokens, D)
    with torch.no_grad():
        reference = layer(x)
        idx, _, _ = layer.route(x)
    owner = idx // (moe.experts // world)  # the rank holding each routed expert
    home = torch.arange(tokens).div(tokens // world, rounding_mode="floor")[:, None]  # the rank holding each token
    crossing = int((owner != home).sum())
    with tempfile.TemporaryDirectory() as folder:
        torch.save({"D": D, "moe": moe, "x": x, "state": layer.state_dict()}, os.path.join(folder, "setup.pt"))
        port = free_port()
        # fresh interpreters (not fork: safe with torch's threads; not multiprocessing's spawn:
        # it would re-run the caller's main script)
        procs = [subprocess.Popen([sys.executable, "-c", "import sys; from whatruns.parallel import _worker; "
                                   "_worker(int(sys.argv[1]), *map(int, sys.argv[2:4]), sys.argv[4], float(sys.argv[5]))",
                                   str(rank), str(world), str(port), folder, str(timeout)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for rank in range(world)]
        deadline = time.monotonic() + timeout
        try:
            for rank, p in enumerate(procs):
                output, _ = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
                if p.returncode:
                    raise RuntimeError(f"expert_parallel: rank {rank} failed:\n{output}")
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"expert_parallel: {world} processes did not finish in {timeout} s") from None
        finally:
            for p in procs:  # only the processes started here
                if p.poll() is None:
                    p.kill()
                    p.wait()
        results = [torch.load(os.path.join(folder, f"rank{r}.pt")) for r in range(world)]
    y = torch.cat([r["y"] for r in results])
    return {
        "max_error": float((y - reference).abs().max()),
        "output": y,
        "reference": reference,
        "sent": [{"dispatch": r["dispatch_bytes"], "combine": r["combine_bytes"], "metadata": r["metadata_bytes"]}
                 for r in results],
        "crossing_rows": crossing,
        "row_bytes": D * x.element_size(),
        "formula_bytes": all_to_all_bytes(tokens, D, moe.top_k, world, x.element_size()),
        "seconds": [r["seconds"] for r in results],
    }
