"""What the calculator page shows (book/calculator.md): a model's count with E, k, the context and the batch set.

The page runs this module in the browser, under Pyodide, from a wheel of this package; it is the same code as
``whatruns count``. Every number it shows is the command line's own JSON (``whatruns count SOURCE --json``),
field for field, so a field the command line gains appears on the page too:

* an unchanged catalog model, or a pasted ``config.json``, is counted by running :func:`whatruns.cli.main` in
  this process (the config as its standard input, ``whatruns count - --json``); an error is the command
  line's own one line;
* with E or k changed, the spec is :func:`with_experts` of the loaded one, written in the library's own format
  (:func:`whatruns.spec.to_dict`) and counted the same way.

Beside it, :func:`report` adds what a batch of B sequences costs per step (forward and training FLOPs) and, for
an MoE, the experts one decoding step of B tokens reads per layer (:func:`whatruns.count.experts_touched`).

>>> from whatruns import calc
>>> r = calc.report("mixtral-8x7b", experts=16)
>>> r["count"]["total_params"] > calc.report("mixtral-8x7b")["count"]["total_params"]
True
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import sys
from typing import Optional

from . import catalog, cli, units
from .count import ACTIVE_CONVENTIONS, experts_touched
from .spec import EmbeddingModel, SpecError, to_dict

__all__ = ["call", "models", "options", "report", "run", "with_experts"]


def run(argv: list, stdin: str = "") -> tuple:
    """The command line, run in this process on ``argv`` with ``stdin`` as its standard input:
    (exit status, what it printed, what it printed as an error)."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = cli.main([str(a) for a in argv])
    finally:
        sys.stdin = saved
    return status, out.getvalue(), err.getvalue()


def _error_line(message: str) -> str:
    """An error as the command line prints it: one line after the program's name."""
    return f"{cli.PROG}: error: {' '.join(str(message).split())}"


def with_experts(spec, experts: Optional[int] = None, top_k: Optional[int] = None):
    """``spec`` with ``experts`` routed experts (E) per MoE layer and ``top_k`` (k) of them per token, everything
    else as it was; validated again, so an impossible pair raises :class:`~whatruns.spec.SpecError`."""
    if experts is None and top_k is None:
        return spec
    moe = getattr(spec, "moe", None)
    if moe is None:
        raise SpecError("this model has no mixture-of-experts layers: E and k do not apply to it")
    changes = {k: v for k, v in (("experts", experts), ("top_k", top_k)) if v is not None}
    for name, value in changes.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{'E' if name == 'experts' else 'k'} must be a whole number, got {value!r}")
    return spec.with_(moe=dataclasses.replace(moe, **changes))


def _describe(spec) -> dict:
    moe = getattr(spec, "moe", None)
    return {"kind": "embedding model" if isinstance(spec, EmbeddingModel) else "transformer",
            "experts": moe.experts if moe is not None else None,
            "top_k": moe.top_k if moe is not None else None}


def models() -> list:
    """The catalog as the page lists it: name, title, variants, and E and k where the model has experts."""
    out = []
    for name in catalog.names():
        e = catalog.entry(name)
        out.append({"name": name, "title": e.title, "variants": list(e.variants), **_describe(e.spec())})
    return out


def options() -> dict:
    """The choices the page offers beside the numbers: how the embedding counts in "active"."""
    return {"active_conventions": list(ACTIVE_CONVENTIONS)}


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SpecError(f"{name} must be a positive whole number, got {value!r}")
    return value


def _argv(source: str, variant, seq_len, batch: int) -> list:
    """``whatruns count SOURCE --json`` with the page's settings (``--batch`` only where B is not the command
    line's default of 1, so the command shown is the one a reader would type)."""
    argv = ["count", source, "--json"]
    if variant:
        argv += ["--variant", variant]
    if seq_len is not None:
        argv += ["--seq-len", seq_len]
    if batch != 1:
        argv += ["--batch", batch]
    return argv


def _load(model, config, variant):
    """The spec the command line counts for this source (the same calls as ``whatruns count``)."""
    if config is not None:
        from . import load
        from .hf import parse_json
        return load(parse_json(config, "standard input"))
    return catalog.entry(model).spec(variant)


def report(model: Optional[str] = None, config: Optional[str] = None, variant: Optional[str] = None,
           experts: Optional[int] = None, top_k: Optional[int] = None, seq_len: Optional[int] = None,
           batch: int = 1, causal: bool = False, active_convention: Optional[str] = None) -> dict:
    """Everything the page shows for one setting of its inputs.

    ``model`` is a catalog name (with an optional ``variant``), or ``config`` the text of a ``config.json``;
    ``experts`` and ``top_k`` change the MoE (None: as loaded); ``seq_len`` is the context T (None: the command
    line's default); ``batch`` is B; ``causal`` and ``active_convention`` are the command line's ``--causal`` and
    ``--active-convention``. Returns ``{"ok": True, "count": <the command line's JSON>, "model": <E, k
    and kind as loaded>, "changed": bool, "per_step": {...}, "command": <the command line>, "readable": {...}}`` or ``{"ok": False, "error":
    <one line, as the command line prints it>}``."""
    if (model is None) == (config is None):
        return {"ok": False, "error": _error_line("give a catalog model or a config, not both or neither")}
    try:
        batch = _positive("the batch B", batch)
    except SpecError as e:
        return {"ok": False, "error": _error_line(e)}
    options = (["--causal"] if causal else []) + (["--active-convention", active_convention]
                                                  if active_convention else [])
    argv = _argv("-" if config is not None else model, variant, seq_len, batch) + options
    status, out, err = run(argv, config or "")
    if status != 0:
        return {"ok": False, "error": err.strip()}
    counted = json.loads(out)
    command = " ".join(["whatruns", *map(str, argv)] + (["< config.json"] if config is not None else []))
    spec = _load(model, config, variant)
    loaded = _describe(spec)
    changed = ((experts is not None and experts != loaded["experts"])
               or (top_k is not None and top_k != loaded["top_k"]))
    if changed:
        try:
            spec = with_experts(spec, experts, top_k)
        except SpecError as e:
            return {"ok": False, "error": _error_line(e)}
        first = counted
        status, out, err = run(_argv("-", None, seq_len, batch) + options, json.dumps(to_dict(spec)))
        if status != 0:
            return {"ok": False, "error": err.strip()}
        counted = json.loads(out)
        counted["source"] = f"{first['source']}, with E = {spec.moe.experts} and k = {spec.moe.top_k}"
        for key in ("text_model_of",):  # what the first reading found out about the source
            if key in first:
                counted[key] = first[key]
        command += f", with E = {spec.moe.experts} and k = {spec.moe.top_k} set on the spec (whatruns.calc.with_experts)"
    steps = _per_step(counted, spec, batch)
    return {"ok": True, "count": counted, "model": loaded, "changed": changed, "per_step": steps, "command": command,
            "readable": {"count": _readable(counted), "per_step": _readable(steps)}}


def _per_step(counted: dict, spec, batch: int) -> dict:
    """What one step over a batch of B sequences of T tokens costs (for an embedding model: B examples), and for
    an MoE the experts per layer that one decoding step (one new token in each of B sequences) reads."""
    tokens = batch if isinstance(spec, EmbeddingModel) else batch * counted["seq_len"]
    out = {"batch": batch, "tokens_per_step": tokens,
           "forward_flops_per_step": counted["flops_per_token"] * tokens,
           "training_flops_per_step": counted["training_flops_per_token"] * tokens}
    moe = getattr(spec, "moe", None)
    if moe is not None:
        out["experts_per_layer_one_token"] = moe.top_k
        out["experts_per_layer_decoding_batch"] = experts_touched(moe.experts, moe.top_k, batch)
        out["experts_per_layer"] = moe.experts
    return out


_NOT_BYTES = {"seq_len", "batch", "bytes_per_element"}


def _readable(tree, in_bytes: bool = False):
    """The same tree with every number as the page prints it, ``{"exact": "46,702,792,704", "short": "46.7B",
    "json": "46702792704"}`` (JavaScript's numbers hold integers exactly only up to 2^53; this text holds all).
    Under a ``..._bytes`` field, the numbers are bytes, and their short form says so ("263 GB"), except the
    settings and element counts beside them (``seq_len``, ``batch``, ``bytes_per_element``, ``..._elements``)."""
    if isinstance(tree, dict):
        return {k: _readable(v, (in_bytes or k.endswith("bytes")) and k not in _NOT_BYTES
                             and not k.endswith("_elements")) for k, v in tree.items()}
    if isinstance(tree, bool) or not isinstance(tree, (int, float)):
        return tree
    if float(tree).is_integer():
        exact = f"{int(tree):,}"
    else:
        exact = f"{tree:,.6g}" if abs(tree) >= 1 else f"{tree:.4g}"
    if in_bytes and float(tree).is_integer():
        short = units.human_bytes(tree) if abs(tree) >= 1000 else exact
    elif abs(tree) >= 10_000:
        short = units.human(tree)
    else:
        short = f"{tree:.2%}" if 0 < abs(tree) < 1 else exact
    return {"exact": exact, "short": short, "json": json.dumps(tree)}  # json: every digit, past 2^53 too


def call(name: str, arguments: str = "{}") -> str:
    """The page's one entry point: ``name`` is ``"models"``, ``"options"`` or ``"report"``, ``arguments`` a JSON object of
    keyword arguments; returns JSON. (A bug is caught and returned as one line, so the page can show it.)"""
    try:
        kwargs = json.loads(arguments)
        calls = {"models": models, "options": options, "report": report}
        result = calls[name](**kwargs) if name in calls else None
        if result is None:
            raise ValueError(f"no such call {name!r}")
    except Exception as e:  # the page shows the line; the command line would have printed it the same way
        result = {"ok": False, "error": _error_line(f"unexpected {type(e).__name__}: {e}")}
    return json.dumps(result)
