"""What actually ran: FLOPs torch counts, parameters a step touches, time by median of repeats.

This module knows only torch (it never reads a spec): it measures any module or function, so
the chapters can put a measurement beside the count from :func:`whatruns.count`.

FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode`, which counts only the ops it
has a formula for (matmuls, convolutions, some attention kernels). In torch 2.13 on CPU two ops
a modern model runs count **0**: the CPU scaled-dot-product-attention kernel
(``aten._scaled_dot_product_flash_attention_for_cpu``) and the grouped matmul of MoE layers
(``aten._grouped_mm``). :func:`flop_counter` adds formulas for them; ``corrected=False`` leaves
them out, to show the pitfall. Embedding lookups, gathers, scatters, norms and activations count
0, by the book's convention. Count under ``torch.no_grad()``, as these functions do.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import torch
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten


def _sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)  # q.k and p.v for every (query, key) pair, per head


def _sdpa_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def _grouped_mm_flops(a, b, offs=None, *args, out_val=None, **kwargs) -> int:
    """2 * rows * k * n summed over the groups; ``offs`` cuts the jagged dimension of a 2-D operand."""
    end = int(offs[-1]) if offs is not None else None
    if a.dim() == 2 and b.dim() == 3:  # tokens sorted by expert @ (E, k, n): the MoE forward
        return 2 * end * a.shape[1] * b.shape[2]
    if a.dim() == 2 and b.dim() == 2:  # (m, K) @ (K, n), K cut into groups: the weight gradient
        return 2 * a.shape[0] * end * b.shape[1]
    if a.dim() == 3 and b.dim() == 2:  # (G, m, k) @ (k, N), N cut into groups
        return 2 * a.shape[1] * a.shape[2] * end
    return 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]  # a batched matmul


_grouped_mm_flops._get_raw = True  # FlopCounterMode passes the tensors themselves (offs is data)

MISSING_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward_flops,
    aten._scaled_dot_product_fused_attention_overrideable: _sdpa_flops,
    aten._scaled_dot_product_fused_attention_overrideable_backward: _sdpa_backward_flops,
    aten._grouped_mm: _grouped_mm_flops,
}
"""The formulas torch 2.13's counter lacks, by op: what :func:`flop_counter` adds."""


def flop_counter(corrected: bool = True, display: bool = False, depth: int = 2) -> FlopCounterMode:
    """A :class:`~torch.utils.flop_counter.FlopCounterMode`; with ``corrected`` (the default) it also
    counts CPU attention and grouped matmuls (see :data:`MISSING_FORMULAS`). Use it under
    ``torch.no_grad()``."""
    return FlopCounterMode(display=display, depth=depth, custom_mapping=MISSING_FORMULAS if corrected else {})


def _run(fn, inputs, backward: bool, counter: FlopCounterMode):
    if not backward:
        with torch.no_grad(), counter:
            fn(*inputs)
        return
    with counter:
        _default_loss(fn(*inputs)).backward()


def count_flops(fn, *inputs, corrected: bool = True, backward: bool = False) -> int:
    """FLOPs of one call ``fn(*inputs)`` (a module or any function) as torch counts them.

    ``corrected=False`` counts with torch's own formulas only (CPU attention and grouped
    matmuls then count 0). ``backward=True`` counts a forward and a backward pass
    (of :func:`touched_params`'s default loss) instead of a forward pass alone.
    """
    counter = flop_counter(corrected)
    _run(fn, inputs, backward, counter)
    return int(counter.get_total_flops())


def flop_breakdown(fn, *inputs, corrected: bool = True, by_module: bool = False,
                   backward: bool = False) -> Dict:
    """Like :func:`count_flops`, but FLOPs by op name (``{"mm": ..., "bmm": ...}``), or with
    ``by_module`` by module name then op (``{"Global": {...}, "decoder.blocks.0": {...}}``)."""
    counter = flop_counter(corrected)
    _run(fn, inputs, backward, counter)
    counts = {mod: {str(op).split(".")[-1]: int(n) for op, n in ops.items()}
              for mod, ops in counter.get_flop_counts().items()}
    return counts if by_module else counts.get("Global", {})


# ---------------------------------------------------------------------------------------------
# parameters touched

@dataclass
class Touched:
    """What :func:`touched_params` returns: elements with a non-zero gradient, in all and by
    parameter name (``per_param[name] = (touched, numel)``)."""

    touched: int
    total: int
    per_param: Dict[str, Tuple[int, int]]

    @property
    def fraction(self) -> float:
        return self.touched / self.total

    def untouched(self) -> Dict[str, Tuple[int, int]]:
        """The parameters not every element of which got a gradient."""
        return {k: v for k, v in self.per_param.items() if v[0] < v[1]}


def _default_loss(out) -> torch.Tensor:
    """A fixed random projection of the output to a scalar: every output element matters
    (a plain sum would give e.g. softmax-invariant directions zero gradient by symmetry)."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    g = torch.Generator().manual_seed(0)
    w = torch.randn(out.shape, generator=g, dtype=torch.float32).to(out.device, out.dtype)
    return (out * w).sum()


def touched_params(model: torch.nn.Module, *inputs, loss_fn: Callable = None, precise: bool = True,
                   rtol: float = 1e-13) -> Touched:
    """Run one forward and backward pass and count the parameter elements whose gradient is
    non-zero: the parameters this input made work.

    ``touched_params(model, *inputs)`` uses a fixed random projection of the output as the loss;
    ``loss_fn(output)`` replaces it; ``touched_params(model, closure)`` with a single callable
    (not a tensor) calls ``closure()`` for the loss, on the model as it is (float32 noise then counts unless
    ``rtol`` is raised). The gradients are
    left in the model's ``.grad``.

    A gradient that is zero in exact arithmetic comes out of float32 as rounding noise, up to
    ~3e-9 of the model's largest gradient (a key bias, useless by softmax's shift invariance; the
    q and k projections when each query sees one key), and genuine gradients go as low as ~1e-8:
    no threshold separates them. So by default (``precise``) the pass runs on a float64 copy of
    the model (float inputs converted; the model itself is left as it was), where the noise
    falls to ~1e-17, and an element counts as touched when its gradient exceeds ``rtol`` times
    the largest gradient in the model. Untouched experts and embedding rows get exact zeros.
    """
    closure = len(inputs) == 1 and callable(inputs[0]) and not isinstance(inputs[0], torch.Tensor)
    original = model
    if precise and not closure:
        model = copy.deepcopy(model).double()
        inputs = tree_map(lambda t: t.double() if torch.is_tensor(t) and t.is_floating_point() else t, inputs)
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        if closure:
            loss = inputs[0]()
        else:
            out = model(*inputs)
            loss = loss_fn(out) if loss_fn is not None else _default_loss(out)
        loss.backward()
    if model is not original:  # leave the gradients on the model, in its own dtype
        for p, q in zip(original.parameters(), model.parameters()):
            p.grad = None if q.grad is None else q.grad.to(p.dtype)
    grads = {name: (None if p.grad is None else p.grad.coalesce().to_dense() if p.grad.is_sparse else p.grad)
             for name, p in model.named_parameters()}
    largest = max((float(g.abs().max()) for g in grads.values() if g is not None and g.numel()), default=0.0)
    per = {name: (0 if g is None else int((g.abs() > rtol * largest).sum()), p.numel())
           for (name, g), p in zip(grads.items(), model.parameters())}
    return Touched(sum(t for t, _ in per.values()), sum(n for _, n in per.values()), per)


# ---------------------------------------------------------------------------------------------
# time

def median_time(fn: Callable, *args, repeats: int = 7, warmup: int = 2) -> float:
    """Seconds one call ``fn(*args)`` takes: the median of ``repeats`` timed calls after
    ``warmup`` untimed ones (``time.perf_counter``)."""
    for _ in range(warmup):
        fn(*args)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_gflops(n: int = 512, repeats: int = 7, dtype=torch.float32, m: int = None, k: int = None) -> float:
    """This machine's matmul speed in GFLOP/s: an (n x n) @ (n x n) product, 2 n^3 FLOPs; with
    ``m`` and/or ``k``, an (m x k) @ (k x n) product, 2 m k n FLOPs (``m=1``: a matrix-vector
    product, one token's decode step; chapter "Counting what runs")."""
    m, k = m or n, k or n
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    return 2 * m * k * n / median_time(torch.mm, a, b, repeats=repeats) / 1e9


def memory_bandwidth(nbytes: int = 2 ** 28, repeats: int = 7) -> float:
    """This machine's memory bandwidth in GB/s (1e9 bytes/s) as a copy sees it: copying a tensor of
    ``nbytes`` reads ``nbytes`` and writes ``nbytes``. Make ``nbytes`` much larger than the last-level
    cache, or this measures the cache. The copy runs on torch's own vectorised kernel, whose speed
    depends on the instructions torch uses (``ATEN_CPU_CAPABILITY``); to bound matrix products on a
    roofline use :func:`read_bandwidth`, measured by the matrix-product routine itself."""
    n = nbytes // 4
    src, dst = torch.ones(n), torch.empty(n)
    return 2 * n * 4 / median_time(dst.copy_, src, repeats=repeats) / 1e9


def read_bandwidth(nbytes: int = 2 ** 27, repeats: int = 7, rows: int = 8192) -> float:
    """This machine's memory bandwidth in GB/s (1e9 bytes/s) as a matrix product sees it: one row
    through an fp32 matrix of ``nbytes`` (``rows`` x ``nbytes / 4 / rows``), which reads every weight
    once and does two FLOPs with it, as one token's decoding step does; bytes are
    :func:`whatruns.count.matmul_bytes` of the product. Measured by the same routine (``torch.mm``) as
    the products a roofline places under it, so that the roof bounds them on any CPU and with any of
    torch's kernels. Make ``nbytes`` much larger than the last-level cache. Chapter "Counting what runs"
    (the roofline)."""
    cols = nbytes // 4 // rows
    x, w = torch.full((1, rows), 0.5), torch.full((rows, cols), 0.5)
    return 4 * (rows + rows * cols + cols) / median_time(torch.mm, x, w, repeats=repeats) / 1e9


def cpu_name() -> str:
    """This machine's processor as the OS names it (``/proc/cpuinfo``'s ``model name`` on Linux; else
    ``platform.processor()``), with torch's kernel capability: ``"AMD EPYC 7B13 (torch kernels: AVX2)"``. For
    the measurements a chapter prints as "on the machine that ran this"."""
    import platform
    name = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "an unnamed CPU"
    return f"{name} (torch kernels: {torch.backends.cpu.get_cpu_capability()})"
