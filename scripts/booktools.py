"""What the site's tooling reads from the chapters: the toc, glued values, sections, recorded run times.

Shared by the Sphinx extension ``scripts/bookext.py`` (the instructors page) and ``scripts/slides.py``
(``make slides``). It only reads the notebooks; it never changes them.
"""

from __future__ import annotations

import datetime
import pathlib
import re

import nbformat
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent

GLUE_ROLE = re.compile(r"\{glue(?::(?:text|any|md))?\}`([^`]+)`")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")


def toc_files(root: pathlib.Path = ROOT) -> list[str]:
    """Every file named in ``_toc.yml``, root first, in reading order (paths without suffix)."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    walk(toc.get("chapters"))
    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    return files


def chapters(root: pathlib.Path = ROOT) -> list[pathlib.Path]:
    """The notebooks the toc lists that exist, in reading order (the intro included)."""
    paths = [root / f"{f}.ipynb" for f in toc_files(root)]
    return [p for p in paths if p.exists()]


def read(path: pathlib.Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def title(nb) -> str:
    """The notebook's first level-one heading."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                m = HEADING.match(line)
                if m and len(m.group(1)) == 1:
                    return m.group(2)
    return ""


def glue_values(nb) -> dict[str, str]:
    """``key -> text/plain`` of every value the notebook glued (what ``{glue:text}`` pastes)."""
    values = {}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            scrap = out.get("metadata", {}).get("scrapbook")
            if not scrap:
                continue
            prefix = scrap.get("mime_prefix", "")
            text = out.get("data", {}).get(prefix + "text/plain")
            if text is not None:
                values[scrap["name"]] = text
    return values


def paste_glue(text: str, values: dict[str, str], missing=None) -> str:
    """Replace ``{glue:text}`key:fmt``` roles by their values, formatted as MyST-NB formats them. A key the
    notebook did not glue raises KeyError, or is replaced by ``missing(key)`` when that is given."""
    from myst_nb.core.variables import format_plain_text

    def sub(m):
        key, _, fmt = m.group(1).partition(":")
        if key not in values:
            if missing is None:
                raise KeyError(f"glue key {key!r} not found")
            return missing(key)
        return format_plain_text(values[key], fmt)

    return GLUE_ROLE.sub(sub, text)


def section(nb, heading: str) -> list:
    """The cells from the level-two heading ``heading`` to the next level-two heading (markdown cells
    may hold several sections: the cell is split at the headings)."""
    found, out = False, []
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            if found:
                out.append(cell)
            continue
        kept = []
        for line in cell.source.splitlines():
            m = HEADING.match(line)
            if m and len(m.group(1)) <= 2:
                if found and kept:
                    out.append(nbformat.v4.new_markdown_cell("\n".join(kept).strip("\n")))
                    kept = []
                found = m.group(2).strip().lower() == heading.lower()
                continue
            if found:
                kept.append(line)
        if found and kept:
            out.append(nbformat.v4.new_markdown_cell("\n".join(kept).strip("\n")))
    return [c for c in out if c.source.strip() or c.cell_type != "markdown"]


def run_seconds(nb) -> float | None:
    """Seconds the kernel spent on the code cells the last time the notebook was executed, summed from the
    timestamps nbclient records in each cell's ``metadata.execution`` (``make execute``); None if absent."""
    total, seen = 0.0, False
    for cell in nb.cells:
        ex = cell.get("metadata", {}).get("execution", {})
        start, end = ex.get("iopub.execute_input"), ex.get("shell.execute_reply")
        if start and end:
            parse = lambda s: datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
            total += (parse(end) - parse(start)).total_seconds()
            seen = True
    return total if seen else None


def figures(nb) -> int:
    """How many image outputs the notebook stores."""
    return sum(1 for c in nb.cells for o in c.get("outputs", [])
               if any(k.startswith("image/") for k in o.get("data", {})))
