"""The command line: count a model, or list the catalog.

    whatruns count SOURCE [--seq-len T] [--batch B] [--kv-dtype D] [--variant NAME] [--json]
    whatruns serve SOURCE [--hardware NAME] [--devices N] [--batch B] [--seq-len T] [--json]
    whatruns catalog [--seq-len T] [--json]

SOURCE is a catalog name (``whatruns catalog`` lists them), a path to a Hugging Face
``config.json`` (or to a folder holding one, or to a spec in the library's own format), or ``-``
to read a config from standard input. ``python -m whatruns`` is the same program.

Without ``--json`` the output is a table for people: one row per component, with exact
integers and the same numbers in readable units (46,702,792,704 beside 46.70B). With ``--json``
it is one JSON object (for ``count``: :meth:`whatruns.count.Count.as_dict` plus the source, the KV cache
of ``--batch`` sequences of ``--seq-len`` tokens and the weights' bytes as stored, :mod:`whatruns.serve`).

``serve`` prints the bytes and the roofline time of one decode step and of a prefill on an accelerator of
:data:`whatruns.serve.ACCELERATORS`, and what fits in its memory.

Bad input (a missing or unreadable file, malformed JSON, a config that describes no model, a bad
``--seq-len``, an unknown catalog name, an unknown hardware name or quantization scheme, a batch or context
that does not fit) exits with status 2 and one line on standard error, the
message of the :class:`~whatruns.spec.SpecError` that explains it; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from . import units

EXIT_OK = 0
EXIT_BAD_INPUT = 2
PROG = "whatruns"


class _Fail(Exception):
    """Bad input found by the CLI itself: the message is printed as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and status 2), like every other error."""

    def error(self, message):  # noqa: D102 - argparse's hook
        raise _Fail(f"{message} (see '{PROG} --help')")


def _seq_len(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _seq_len(text)


def _parser() -> _Parser:
    from .count import ACTIVE_CONVENTIONS
    p = _Parser(prog=PROG, description="Count what runs per input: parameters stored, parameters "
                                       "active, and FLOPs per token.")
    sub = p.add_subparsers(dest="command", metavar="{count,serve,catalog}", parser_class=_Parser)
    sub.required = True
    c = sub.add_parser("count", help="count one model: parameters, active parameters, FLOPs per token",
                       description="Count one model. SOURCE is a catalog name, a path to a config.json "
                                   "(or a folder holding one), a Hugging Face Hub id (owner/name; read "
                                   "through huggingface_hub and its cache), or - for standard input.")
    c.add_argument("source", metavar="SOURCE")
    c.add_argument("--seq-len", type=_seq_len, default=2048, metavar="T",
                   help="tokens per sequence, for attention FLOPs (default: 2048)")
    c.add_argument("--causal", action="store_true",
                   help="attention pays only for the keys a query can see (causal mask, sliding windows, "
                        "chunks); without it, for all T keys, as a FLOP counter sees a masked attention")
    c.add_argument("--active-convention", choices=ACTIVE_CONVENTIONS, default="one_row", metavar="C",
                   help="how the embedding counts in 'active': one_row (the row a token reads; default), "
                        "whole_table (as Mixtral and Llama 4 publish), non_embedding (neither table nor head)")
    c.add_argument("--structure", action="store_true",
                   help="also print the layers as read: mixers, heads, key/value heads, head size, experts")
    c.add_argument("--variant", default=None, metavar="NAME",
                   help="for a catalog name: count one of its variants (see its entry) instead")
    c.add_argument("--batch", type=_positive_int, default=1, metavar="B",
                   help="sequences whose KV cache is counted (default: 1)")
    c.add_argument("--kv-dtype", default="bfloat16", metavar="D",
                   help="the KV cache's element type: bfloat16 (default), float16, float32, float8")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    v = sub.add_parser("serve", help="bytes and time of a decode step and a prefill on an accelerator",
                       description="Bytes per decode step (weights as stored, of the experts a batch reaches, "
                                   "and the KV cache), the roofline time of a decode step and of a prefill on "
                                   "an accelerator, and the largest batch and context that fit in its memory.")
    v.add_argument("source", metavar="SOURCE")
    v.add_argument("--hardware", default="h100", metavar="NAME",
                   help="accelerator: h100 (default), h200, b200, mi300x")
    v.add_argument("--devices", type=_positive_int, default=1, metavar="N",
                   help="accelerators sharing the model, as ideal tensor parallelism (default: 1)")
    v.add_argument("--batch", type=_positive_int, default=1, metavar="B", help="sequences decoded at once (default: 1)")
    v.add_argument("--seq-len", type=_seq_len, default=4096, metavar="T",
                   help="tokens per sequence: the decode step's context and the prompt prefilled (default: 4096)")
    v.add_argument("--kv-dtype", default="bfloat16", metavar="D",
                   help="the KV cache's element type (default: bfloat16)")
    v.add_argument("--mla", choices=("latent", "expanded"), default="latent",
                   help="how MLA layers cache: their latent (default; MLA engines) or expanded keys and values")
    v.add_argument("--compute", choices=("bfloat16", "float8"), default=None,
                   help="the math's precision (default: float8 for fp8 checkpoints, else bfloat16)")
    v.add_argument("--weight-dtype", default=None, metavar="D",
                   help="count every weight in this dtype instead of as the checkpoint stores it")
    v.add_argument("--variant", default=None, metavar="NAME", help="for a catalog name: one of its variants")
    v.add_argument("--json", action="store_true", help="print one JSON object")
    g = sub.add_parser("catalog", help="list the catalog's models with their counts",
                       description="List the catalog: total and active parameters and FLOPs per token "
                                   "of each model, beside the published figures.")
    g.add_argument("--seq-len", type=_seq_len, default=2048, metavar="T",
                   help="tokens per sequence, for attention FLOPs (default: 2048)")
    g.add_argument("--json", action="store_true", help="print one JSON object")
    return p


# ---------------------------------------------------------------------------------------------
# readable numbers

def human(n: float) -> str:
    """A number in readable units with two decimals: 46702792704 -> '46.70B', 4096 -> '4.10k'."""
    return units.human(n, decimals=2)


def _exact(n) -> str:
    """All digits, exactly: an integer as it is (past 2^53 too), a fraction to one decimal."""
    if isinstance(n, int):
        return f"{n:,}"
    return f"{n:,.0f}" if float(n).is_integer() else f"{n:,.1f}"


def _both(n: float) -> str:
    return f"{_exact(n)} ({human(n)})"


def _table(header: List[str], rows: List[List[str]], right: bool = True) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        cells = [str(r[0]).ljust(widths[0])]
        cells += [str(x).rjust(w) if right else str(x).ljust(w) for x, w in zip(r[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


FLOP_CONVENTION = ("FLOPs are forward, per token: 2 per multiply-add in matmuls and convolutions (lookups, norms, "
                   "activations, softmax count 0)")


def _flop_footer(causal: bool, transformer: bool) -> str:
    if not transformer:
        return FLOP_CONVENTION.replace("per token", "per example") + "."
    keys = "only the keys each query can see (--causal)" if causal else \
        "all T keys per query, masks ignored, as a FLOP counter sees it (--causal: only visible keys)"
    return f"{FLOP_CONVENTION}; attention over {keys}."


# ---------------------------------------------------------------------------------------------
# commands

def _load(source: str, variant: Optional[str]):
    """The spec for SOURCE, a label for it, and the wrapper model_type it was read out of (or None)."""
    from . import catalog, hf
    if variant is not None:
        e = catalog.entry(source)
        return e.spec(variant), f"{e.title}, variant {variant!r}", None
    if source == "-":
        config, label = hf.parse_json(sys.stdin.read(), "standard input"), "standard input"
    else:
        config, label = hf.resolve(source)
        key = source.strip().lower()
        if label.startswith("catalog entry"):
            label = f"{catalog.entry(key).title}, catalog {key!r}"
    wrapper = hf.text_model(config)[1] if "whatruns" not in config else None
    return hf.load(config), label, wrapper


def _structure(spec) -> List[str]:
    """The layers as read, one line per run of identical layers."""
    from .spec import Transformer
    if not isinstance(spec, Transformer):
        return [f"{len(spec.tables)} embedding tables ({sum(t.rows for t in spec.tables):,} rows of {spec.dim}), "
                f"bottom MLP {spec.bottom_mlp}, top MLP {spec.top_mlp}, {spec.interaction} interaction"]
    lines = []
    for name, stack in spec.stacks:
        total = sum(r.repeat for r in stack)
        period, times = _period(stack)
        lines.append(f"{name}: {total} layers" + (f", {times} times the {sum(r.repeat for r in period)} below"
                                                  if times > 1 else ""))
        start = 0
        for r in period:
            span = f"{start}" if r.repeat == 1 else f"{start}-{start + r.repeat - 1}"
            lines.append(f"  {span:>11}  {r.block.describe()}")
            start += r.repeat
    extras = [f"vocab {spec.vocab:,}", f"width {spec.width:,}", "tied embedding" if spec.tied else "untied head"]
    if spec.positions:
        extras.append(f"{spec.positions:,} learned positions")
    if spec.relative_buckets:
        extras.append(f"{spec.relative_buckets} relative-position buckets")
    lines.append(", ".join(extras))
    return lines


def _period(stack):
    """The shortest run pattern the stack repeats (``(runs, times)``; a stack that repeats nothing is
    itself once), so that 24 alternating pairs print as two lines."""
    n = len(stack)
    for p in range(1, n // 2 + 1):
        if n % p == 0 and all(stack[i] == stack[i % p] for i in range(n)):
            return stack[:p], n // p
    return stack, 1


def _count(args) -> int:
    from .count import active_params_as, count
    from .spec import Transformer
    spec, label, wrapper = _load(args.source, args.variant)
    c = count(spec, seq_len=args.seq_len, causal=args.causal)
    active = active_params_as(c, args.active_convention)
    kv, wb, unknown = _serving_bytes(spec, args.seq_len, args.batch, args.kv_dtype)
    if args.json:
        d = {"source": label, "text_model_of": wrapper, **c.as_dict(), "active_fraction": c.active_fraction,
             "causal": args.causal, "active_convention": args.active_convention,
             "active_params_as_convention": active, "kv_cache_bytes": kv.as_dict() if kv else None,
             "weight_bytes": wb.as_dict() if wb else None, "weight_bytes_unknown": unknown}
        if args.structure:
            d["structure"] = _structure(spec)
        print(json.dumps(d, indent=2))
        return EXIT_OK
    rows = []
    for name, part in c.breakdown.items():
        if part.params or part.active or part.flops:
            rows.append([name, _both(part.params), _both(part.active), _both(part.flops)])
    rows.append(["total", _both(c.total_params), _both(c.active_params), _both(c.flops_per_token)])
    print(f"{label}; seq_len {c.seq_len}{', causal' if args.causal else ''}")
    if wrapper is not None:
        print(f"counted as its text model (the {wrapper!r} config's text_config); other towers are not counted")
    if args.structure:
        print("\n".join(_structure(spec)))
    print(_table(["component", "params", "active", "FLOPs/token"], rows))
    print()
    print(f"active fraction         {c.active_fraction:.2%}")
    if args.active_convention != "one_row":
        print(f"active, {args.active_convention:<15} {_both(active)}")
    print(f"embedding params        {_both(c.embedding_params)}  (token and position tables, untied LM head)")
    print(f"non-embedding params    {_both(c.non_embedding_params)}")
    print(f"training FLOPs/token    {_both(c.training_flops_per_token)}  (3 x forward)")
    if wb is not None:
        print(f"weights as stored       {_bytes(wb.total)}  ({wb.scheme})")
    else:
        print(f"weights as stored       unknown: {unknown}")
    if kv is not None:
        seqs = f"{kv.batch} sequences" if kv.batch > 1 else "one sequence"
        parts = ", ".join(f"{k} {_bytes(v, exact=False)}" for k, v in kv.breakdown.items())
        print(f"KV cache                {_bytes(kv.total)}  ({seqs} of {kv.seq_len:,} tokens, "
              f"{args.kv_dtype}{': ' + parts if parts else ''})")
    print(_flop_footer(args.causal, isinstance(spec, Transformer)))
    return EXIT_OK


def _bytes(n: float, exact: bool = True) -> str:
    from .units import human_bytes
    return f"{_exact(n)} bytes ({human_bytes(n)})" if exact else human_bytes(n)


def _serving_bytes(spec, seq_len: int, batch: int, kv_dtype: str):
    """The KV cache (None for a model that keeps none) and the weights as stored (None, with the reason,
    when the checkpoint's format is not one whatruns reads: counting goes on)."""
    from .serve import dtype_bytes, kv_cache_bytes, weight_bytes
    from .spec import SpecError, Transformer
    dtype_bytes(kv_dtype, "KV-cache dtype")  # a bad --kv-dtype is bad input, whatever the model
    kv = kv_cache_bytes(spec, seq_len, batch, kv_dtype) if isinstance(spec, Transformer) else None
    try:
        return kv, weight_bytes(spec), None
    except SpecError as e:
        return kv, None, str(e)


def _serve(args) -> int:
    from . import serve
    from .units import human_bytes
    spec, label, wrapper = _load(args.source, args.variant)
    hw = serve.accelerator(args.hardware)
    serve._decoder(spec)  # a model that does not decode (an encoder alone, a recommendation model): one line
    wb = serve.weight_bytes(spec, args.weight_dtype)
    B, T, n = args.batch, args.seq_len, args.devices
    kw = dict(kv_dtype=args.kv_dtype, mla=args.mla)
    need = serve.check_fits(spec, hw, B, T, n, weights=wb, **kw)
    kv = serve.kv_cache_bytes(spec, T, B, args.kv_dtype, args.mla)
    decode = serve.decode_step(spec, hw, B, T, compute=args.compute, devices=n, weights=wb, **kw)
    pre = serve.prefill(spec, hw, B, T, compute=args.compute, devices=n, weights=wb, **kw)
    most_batch = serve.max_batch(spec, hw, T, n, weights=wb, **kw)
    most_context = serve.max_context(spec, hw, B, n, weights=wb, **kw)
    if args.json:
        print(json.dumps({"source": label, "text_model_of": wrapper, "hardware": hw.key, "hardware_name": hw.name,
                          "devices": n, "batch": B, "seq_len": T, "memory": hw.memory * n,
                          "weight_bytes": wb.as_dict(), "kv_cache_bytes": kv.as_dict(), "memory_needed": need,
                          "decode": decode.as_dict(), "prefill": pre.as_dict(), "max_batch": most_batch,
                          "max_context": most_context, "sources": list(hw.sources)}, indent=2))
        return EXIT_OK
    where = f"{n} x {hw.name}" if n > 1 else f"one {hw.name}"
    print(f"{label} on {where} ({human_bytes(hw.memory)} HBM at {hw.bandwidth / 1e12:.2f} TB/s, "
          f"{hw.peak['bfloat16'] / 1e12:,.0f} TFLOP/s bf16 and {hw.peak['float8'] / 1e12:,.0f} fp8, dense, each)")
    if wrapper is not None:
        print(f"served as its text model (the {wrapper!r} config's text_config)")
    seqs = f"{B} sequences" if B > 1 else "one sequence"
    print(f"weights as stored   {_bytes(wb.total)}  ({wb.scheme})")
    print(f"KV cache            {_bytes(kv.total)}  ({seqs} of {T:,} tokens, {args.kv_dtype}"
          f"{', MLA ' + args.mla if kv.mla_latent else ''})")
    print(f"memory needed       {_bytes(need)} of {human_bytes(hw.memory * n)}")
    print()
    rows = []
    for name, st in ((f"decode step ({seqs})", decode), (f"prefill ({B} x {T:,} tokens)", pre)):
        rows.append([name, human(st.flops), human_bytes(st.bytes), f"{st.compute_time * 1e3:.2f} ms",
                     f"{st.memory_time * 1e3:.2f} ms", f"{st.time * 1e3:.2f} ms", st.bound,
                     f"{st.tokens_per_second:,.0f}"])
    print(_table(["step", "FLOPs", "bytes", "compute", "memory", "time", "bound", "tokens/s"], rows))
    print(f"  decode reads {human_bytes(decode.weight_bytes)} of weights (the experts {B} tokens reach) and "
          f"{human_bytes(decode.kv_bytes)} of KV cache; math in {decode.compute}")
    print()
    context = "any context (its cache stops growing)" if most_context is None else f"{most_context:,} tokens"
    print(f"fits: at {T:,} tokens at most {most_batch:,} sequences; {seqs} reach at most {context}")
    print("Roofline: a step takes the longer of FLOPs / peak and bytes / bandwidth; no kernel reaches either, "
          "so real steps are slower. Uniform routing; activations and runtime memory not counted.")
    return EXIT_OK


def _catalog(args) -> int:
    from . import catalog
    rows = catalog.table(seq_len=args.seq_len)
    if args.json:
        models = []
        for r in rows:
            e = catalog.entry(r.name)
            d = r.as_dict()
            d["published_total_as_printed"] = e.published["total_params"].as_printed if "total_params" in e.published else None
            d["published_active_as_printed"] = e.published["active_params"].as_printed if "active_params" in e.published else None
            models.append(d)
        print(json.dumps({"seq_len": args.seq_len, "models": models}, indent=2))
        return EXIT_OK
    table = []
    for r in rows:
        e = catalog.entry(r.name)
        pt = e.published.get("total_params")
        pa = e.published.get("active_params")
        name = r.name if r.basis == "config" else f"{r.name} ({r.basis})"
        table.append([name, human(r.total_params), human(r.active_params), f"{r.active_fraction:.1%}",
                      human(r.flops_per_token), pt.as_printed if pt else "-", pa.as_printed if pa else "-"])
    print(f"seq_len {args.seq_len}; FLOPs are forward, per token (per example for dlrm-v2)")
    print(_table(["model", "total", "active", "active %", "FLOPs/token", "published total", "published active"],
                 table))
    return EXIT_OK


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    from .spec import SpecError
    try:
        args = _parser().parse_args(argv)
        return {"count": _count, "serve": _serve, "catalog": _catalog}[args.command](args)
    except (_Fail, SpecError) as e:
        return _error(str(e))
    except BrokenPipeError:  # the reader went away (| head): not an error of ours
        _silence_stdout()
        return EXIT_OK
    except (OSError, ValueError) as e:  # anything the loader let through: still one line
        return _error(f"{type(e).__name__}: {e}")
    except KeyboardInterrupt:
        return 130
    except SystemExit as e:  # --help, and argparse's own exits
        return e.code if isinstance(e.code, int) else EXIT_OK
    except Exception as e:  # a bug: one line, not a traceback
        return _error(f"unexpected {type(e).__name__}: {e}")


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that Python's final flush does not fail again."""
    import os
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _error(message: str) -> int:
    line = " ".join(message.split())  # one line, whatever the message held
    print(f"{PROG}: error: {line}", file=sys.stderr)
    return EXIT_BAD_INPUT


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
