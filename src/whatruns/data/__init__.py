"""The stored results the chapters read, shipped with the package: a chapter downloaded alone finds them.

Three files sit beside this module (``whatruns/data/<name>.json``):

* ``like_with_like`` -- chapter "Comparing like with like": the dense and MoE sweep on
  :class:`whatruns.tasks.OrderTwoLanguage` (``make experiments``, ``scripts/experiments.py``);
* ``resting_parameters`` -- chapter "Do resting parameters learn less?": memorization and a rule on
  :class:`whatruns.tasks.ModularPairs` (the same script);
* ``moe_speed_cpu`` -- chapter "What FLOPs don't count": the MoE speed benchmark of
  :mod:`whatruns.bench` (``benchmarks/moe_speed.py --threads 0 1 --json ...``), as measured on the
  machine that built the book.

>>> from whatruns import data
>>> data.names()
['like_with_like', 'moe_speed_cpu', 'resting_parameters']
>>> data.load("like_with_like")["settings"]["steps"]
1500

``tests/test_data.py`` checks each file against the code that wrote it (settings, seeds, the runs'
configurations and counts, the current task definitions, a short re-run), so the two cannot drift
apart unnoticed.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import List

_HERE = Path(__file__).resolve().parent


def names() -> List[str]:
    """The stored results, by name (the file names without ``.json``)."""
    return sorted(p.stem for p in _HERE.glob("*.json"))


def path(name: str) -> Path:
    """Where the stored result ``name`` lives (``scripts/experiments.py`` writes there). An unknown name
    raises ``KeyError`` with the names there are."""
    p = _HERE / f"{name}.json"
    if not p.exists():
        close = difflib.get_close_matches(name, names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; stored: {', '.join(names())}"
        raise KeyError(f"no stored result {name!r}{hint}")
    return p


def load(name: str):
    """The stored result ``name``, parsed from its JSON file (a fresh copy on every call)."""
    return json.loads(path(name).read_text(encoding="utf-8"))
