"""Published models as data: each one's config, where it comes from, and the figures its authors published.

Every model is one JSON file beside this module (``whatruns/catalog/<name>.json``)::

    {
      "name": "mixtral-8x7b",              # the catalog name: whatruns.load("mixtral-8x7b")
      "title": "Mixtral 8x7B",
      "kind": "mixture of experts (decoder-only)",
      "config": {...},                     # a real Hugging Face config.json, field for field, or
                                           # (no HF config exists) the library's own format {"whatruns": ...}
      "source": "...",                     # where the config comes from
      "published": {                       # figures as their authors printed them, each with its source
        "total_params": {"value": 4.67e10, "unit": "parameters", "as_printed": "46.7B", "source": "..."},
        ...
      },
      "notes": ["..."],                    # conventions and discrepancies worth knowing
      "variants": {"label": {"config": {...}, "note": "..."}},   # optional: other readings of the sources
      "table_variant": "label"             # optional: the variant the book's table should count
    }

Only the published figures are typed in; every count is computed from the config
(:func:`spec` then :func:`whatruns.count`). ``tests/test_catalog.py`` compares the two and
explains each gap.

>>> from whatruns import catalog
>>> catalog.names()[:3]
['dbrx', 'deepseek-v3', 'dlrm-v2']
>>> catalog.entry("mixtral-8x7b").published["total_params"].as_printed
'46.7B'
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..spec import SpecError

_HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Figure:
    """One published figure: its value in base units (parameters, FLOPs, tokens, bytes...),
    the unit, the text as printed, and where it was printed."""

    value: float
    unit: str
    as_printed: str
    source: str

    @property
    def digits(self) -> Optional[int]:
        """Significant figures as printed: '46.7B' -> 3, '175.0B' -> 4, '12,850' -> 4, '7B' -> 1. Trailing
        zeros of a whole number do not count ('400B' -> 1, the lenient reading); None when no number
        leads the text (GPT-3's active '= total parameters')."""
        m = re.match(r"[~]?\s*([0-9][0-9,]*(?:\.[0-9]+)?)", self.as_printed.strip())
        if not m:
            return None
        d = m.group(1).replace(",", "")
        if "." in d:
            return len(d.replace(".", "").lstrip("0"))
        return len(d.lstrip("0").rstrip("0")) or 1

    def agrees(self, x: float, digits: Optional[int] = None) -> bool:
        """Whether ``x``, rounded to the figures printed (or to ``digits``), is the printed value:
        46,702,792,704 agrees with '46.7B', 12,952,938,780 does not agree with '12,850' (M). The test
        the chapter "Real models, counted" applies to every published figure."""
        sig = digits or self.digits
        if sig is None:
            raise SpecError(f"{self.as_printed!r} prints no number to agree with")

        def round_sig(v):
            return 0.0 if v == 0 else round(v, sig - 1 - math.floor(math.log10(abs(v))))

        return math.isclose(round_sig(x), round_sig(self.value), rel_tol=1e-9)


@dataclass(frozen=True)
class Variant:
    """Another reading of the sources (a typo as printed, a disputed size): a config and why it exists."""

    config: dict
    note: str


@dataclass(frozen=True)
class Entry:
    """A published model: ``config`` (a Hugging Face config dict, or the library's own format),
    its ``source``, the ``published`` figures by name (``total_params``, ``active_params``, ...),
    ``notes`` on conventions and discrepancies, and optional ``variants``."""

    name: str
    title: str
    kind: str
    config: dict = field(repr=False)
    source: str = field(repr=False)
    published: Dict[str, Figure] = field(repr=False)
    notes: Tuple[str, ...] = field(repr=False)
    variants: Dict[str, Variant] = field(default_factory=dict, repr=False)
    table_variant: Optional[str] = None

    @property
    def is_hf(self) -> bool:
        """Whether ``config`` is a Hugging Face config (else the library's own format)."""
        return "whatruns" not in self.config

    def config_for(self, variant: Optional[str] = None) -> dict:
        """The config itself (``variant=None``) or one of its variants', as a fresh copy."""
        if variant is None:
            return json.loads(json.dumps(self.config))
        if variant not in self.variants:
            raise SpecError(f"{self.name} has no variant {variant!r}; it has: {', '.join(self.variants) or 'none'}")
        return json.loads(json.dumps(self.variants[variant].config))

    def spec(self, variant: Optional[str] = None):
        """The spec of this model (or of one of its variants)."""
        return _to_spec(self.config_for(variant))


def _to_spec(config: dict):
    if "whatruns" in config:
        from ..spec import from_dict
        return from_dict(config)
    from .. import load  # Hugging Face configs go through whatruns.load (whatruns.hf)
    return load(config)


@lru_cache(maxsize=None)
def _entries() -> Dict[str, Entry]:
    out = {}
    for path in sorted(_HERE.glob("*.json")):
        d = json.loads(path.read_text(encoding="utf-8"))
        variants = {k: Variant(config=v["config"], note=v["note"]) for k, v in d.get("variants", {}).items()}
        out[d["name"]] = Entry(
            name=d["name"], title=d["title"], kind=d["kind"], config=d["config"], source=d["source"],
            published={k: Figure(**v) for k, v in d["published"].items()},
            notes=tuple(d.get("notes", ())), variants=variants, table_variant=d.get("table_variant"))
        if d["name"] != path.stem:
            raise RuntimeError(f"catalog file {path.name} holds {d['name']!r}; the file name must match")
    return out


def names() -> List[str]:
    """The catalog's model names, sorted."""
    return sorted(_entries())


def entries() -> Dict[str, Entry]:
    """All entries, by name."""
    return dict(_entries())


def entry(name: str) -> Entry:
    """The entry of one model. Names are case-insensitive; an unknown name raises
    :class:`~whatruns.spec.SpecError` (one line, naming the closest matches)."""
    if not isinstance(name, str):
        raise SpecError(f"a catalog name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    table = _entries()
    if key in table:
        return table[key]
    close = difflib.get_close_matches(key, list(table), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(names())}"
    raise SpecError(f"unknown catalog model {name!r}{hint}")


def config(name: str) -> dict:
    """The config dict of one model (a fresh copy): Hugging Face format, or the library's own
    (a ``"whatruns"`` key) where no Hugging Face config exists. ``whatruns.load(name)`` reads this."""
    return entry(name).config_for(None)


def spec(name: str, variant: Optional[str] = None):
    """The spec of one model: :func:`whatruns.load` of its config (or :func:`whatruns.spec.from_dict`
    for the library's own format)."""
    return entry(name).spec(variant)


@dataclass(frozen=True)
class Row:
    """One row of :func:`table`: counts computed from the config beside the published figures
    (``None`` where none was published)."""

    name: str
    title: str
    basis: str  # "config" or the variant counted
    total_params: int
    active_params: int
    active_fraction: float
    flops_per_token: float
    published_total: Optional[float]
    published_active: Optional[float]

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def table(seq_len: int = 2048, only: Optional[List[str]] = None) -> List[Row]:
    """Every catalog model (or the names in ``only``) counted at ``seq_len`` tokens: total and active
    parameters, the active fraction, forward FLOPs per token (per example for DLRM), and the
    published totals, for the book's chapter "Real models, counted". Models whose config does not
    describe the published model (see an entry's ``table_variant``) are counted from that variant."""
    from ..count import count
    rows = []
    for n in (only or names()):
        e = entry(n)
        c = count(e.spec(e.table_variant), seq_len=seq_len)
        pt = e.published.get("total_params")
        pa = e.published.get("active_params")
        rows.append(Row(name=e.name, title=e.title, basis=e.table_variant or "config",
                        total_params=c.total_params, active_params=c.active_params,
                        active_fraction=c.active_fraction, flops_per_token=c.flops_per_token,
                        published_total=pt.value if pt else None, published_active=pa.value if pa else None))
    return rows


__all__ = ["Entry", "Figure", "Row", "Variant", "config", "entries", "entry", "names", "spec", "table"]
