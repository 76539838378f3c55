"""``make slides``: every chapter as a reveal.js deck that works offline, in ``_build/slides/``.

    python scripts/slides.py                      # every chapter in _toc.yml
    python scripts/slides.py book/03_moe.ipynb    # some

The committed notebooks are never changed: each is read, copied to ``_build/slides/src/`` with slide metadata
chosen for a lecture, and exported with nbconvert's slides exporter. What the copy gets:

- every heading starts a slide (level one and two) or a sub-slide (level three); markdown cells are split at
  their headings so that each section begins on its own slide;
- a plotting cell (tagged ``hide-input``) shows its figure only, on a sub-slide of its own; a code cell longer
  than ``LONG_CELL`` lines gets a sub-slide too; ``remove-*`` tags are honoured;
- the chapter's "What to take away" list becomes the speaker notes of the title slide (press S);
- the book's MyST markup is turned into what a plain notebook renderer shows: glued values pasted in,
  ``{cite}`` as author and year, ``{doc}``/``{ref}`` as links to the built site, answers as ``<details>``.

Offline: reveal.js (vendored by the ``sphinx-revealjs`` package) and MathJax 3 (vendored by
``sphinx-mathjax-offline``) are copied beside the decks; the template loads nothing else. The script fails if
a deck would load anything from another host.
"""

from __future__ import annotations

import copy
import html
import importlib.util
import pathlib
import re
import shutil
import sys
import time

import nbformat

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import booktools  # noqa: E402
from bookext import external_loads  # noqa: E402

ROOT = booktools.ROOT
OUT = ROOT / "_build" / "slides"
TEMPLATE_DIR = pathlib.Path(__file__).resolve().parent / "slides_template"
LONG_CELL = 14  # lines of code above which a code cell gets a sub-slide of its own
TAKEAWAY = "What to take away"


def _package_dir(name: str) -> pathlib.Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed (make installs it from requirements.txt)")
    return pathlib.Path(list(spec.submodule_search_locations)[0])


def reveal_dir() -> pathlib.Path:
    return _package_dir("sphinx_revealjs") / "_static" / "revealjs"


def mathjax_dir() -> pathlib.Path:
    return _package_dir("sphinx-mathjax-offline") / "static" / "mathjax"


# --- MyST -> what a plain notebook renderer shows --------------------------------------------------------------

def _bib() -> dict[str, tuple[str, str]]:
    """key -> (authors as cited, year) from book/references.bib."""
    from pybtex.database import parse_file

    out = {}
    for key, entry in parse_file(str(ROOT / "book" / "references.bib")).entries.items():
        people = entry.persons.get("author") or entry.persons.get("editor") or []
        last = [" ".join(p.last_names).replace("{", "").replace("}", "") for p in people]
        who = (last[0] if len(last) == 1 else f"{last[0]} and {last[1]}" if len(last) == 2
               else f"{last[0]} et al." if last else key)
        out[key] = (who, entry.fields.get("year", ""))
    return out


class Myst:
    """Turns one chapter's MyST markdown into CommonMark plus HTML."""

    ROLE = re.compile(r"\{([\w:-]+)\}`([^`]*)`")

    def __init__(self, values: dict[str, str], titles: dict[str, str], labels: dict[str, tuple[str, str]],
                 bib: dict[str, tuple[str, str]]):
        self.values, self.titles, self.labels, self.bib = values, titles, labels, bib

    def _missing(self, key: str) -> str:
        print(f"  warning: glue key {key!r} not in the notebook's outputs (not executed?)", file=sys.stderr)
        return f"[{key}?]"

    def _role(self, m: re.Match) -> str:
        role, text = m.group(1), m.group(2)
        explicit = re.match(r"^(.*?)\s*<([^>]+)>$", text, re.S)
        if role.startswith("glue"):
            return booktools.paste_glue(m.group(0).replace(f"{{{role}}}", "{glue:text}"), self.values,
                                        missing=self._missing)
        if role in ("cite", "cite:p", "cite:t", "cite:ps", "cite:ts"):
            cites = [self.bib.get(k.strip(), (k.strip(), "")) for k in text.split(",")]
            if role.startswith("cite:t"):
                return "; ".join(f"{who} ({year})" for who, year in cites)
            return "(" + "; ".join(f"{who}, {year}" for who, year in cites) + ")"
        if role == "doc":
            target = (explicit.group(2) if explicit else text).strip()
            name = pathlib.PurePosixPath(target).name
            label = explicit.group(1) if explicit else self.titles.get(name, name)
            return f'<a href="{name}.slides.html">{html.escape(label)}</a>'
        if role in ("ref", "numref"):
            label = (explicit.group(2) if explicit else text).strip()
            doc, heading = self.labels.get(label, ("", label))
            shown = explicit.group(1) if explicit else heading
            return f'<a href="{doc}.slides.html">{html.escape(shown)}</a>' if doc else shown
        if role in ("math", "eq"):
            return f"${text}$" if role == "math" else text
        return explicit.group(1) if explicit else text

    def _fences(self, text: str) -> str:
        """``:::{admonition} Title`` / ``:class: dropdown`` blocks -> <details> or a bold title."""
        out, stack = [], []
        lines = text.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i]
            m = re.match(r"^(:{3,})\{([\w-]+)\}\s*(.*)$", line)
            if m:
                kind, title = m.group(2), m.group(3).strip()
                opts = {}
                while i + 1 < len(lines) and re.match(r"^:\w+:", lines[i + 1]):
                    i += 1
                    k, _, v = lines[i][1:].partition(":")
                    opts[k] = v.strip()
                title = title or kind.capitalize()
                if "dropdown" in opts.get("class", "") or kind == "dropdown":
                    out += [f"<details><summary>{html.escape(title)}</summary>", ""]
                    stack.append((m.group(1), "</details>"))
                else:
                    out += [f"**{title}.**", ""]
                    stack.append((m.group(1), ""))
            elif stack and line.strip() == stack[-1][0]:
                out += ["", stack.pop()[1]]
            elif re.match(r"^\([\w.:-]+\)=\s*$", line):
                pass
            else:
                out.append(line)
            i += 1
        return "\n".join(out)

    def __call__(self, text: str) -> str:
        return self.ROLE.sub(self._role, self._fences(text))


# --- slide metadata ---------------------------------------------------------------------------------------------

def _split_at_headings(cell) -> list:
    parts, kept = [], []
    for line in cell.source.splitlines():
        if re.match(r"^#{1,3}\s", line) and any(s.strip() for s in kept):
            parts.append(kept)
            kept = []
        kept.append(line)
    parts.append(kept)
    out = []
    for i, lines in enumerate(parts):
        c = copy.deepcopy(cell)
        c.source = "\n".join(lines).strip("\n")
        c.id = f"{cell.get('id', 'cell')}-{i}"
        if c.source.strip():
            out.append(c)
    return out


def _set(cell, slide_type: str):
    cell.metadata["slideshow"] = {"slide_type": slide_type}


def lecture(nb, myst: Myst) -> nbformat.NotebookNode:
    """A copy of the chapter with slide metadata for a lecture (see the module's docstring)."""
    takeaway = [c for c in booktools.section(nb, TAKEAWAY) if c.cell_type == "markdown"]
    cells = []
    for cell in nb.cells:
        tags = set(cell.metadata.get("tags", []))
        if "remove-cell" in tags:
            continue
        if cell.cell_type == "markdown":
            for part in _split_at_headings(cell):
                m = re.match(r"^(#{1,3})\s", part.source)
                _set(part, {1: "slide", 2: "slide", 3: "subslide"}[len(m.group(1))] if m else "-")
                part.source = myst(part.source)
                cells.append(part)
            continue
        if cell.cell_type != "code":
            continue
        c = copy.deepcopy(cell)
        c.outputs = [o for o in c.get("outputs", [])
                     if not o.get("metadata", {}).get("scrapbook")]  # glued values: pasted into the prose
        if "remove-output" in tags:
            c.outputs = []
        if tags & {"hide-input", "remove-input"}:
            c.metadata.setdefault("tags", [])
            c.metadata["tags"] = sorted(set(c.metadata["tags"]) | {"slides-no-input"})
            _set(c, "subslide" if c.outputs else "skip")
        elif len(c.source.splitlines()) > LONG_CELL:
            _set(c, "subslide")
        else:
            _set(c, "-")
        cells.append(c)
    if takeaway and cells:
        notes = nbformat.v4.new_markdown_cell(
            f"**{TAKEAWAY}** (the chapter's closing list):\n\n" + myst("\n\n".join(c.source for c in takeaway)))
        _set(notes, "notes")
        cells.insert(1, notes)
    out = nbformat.v4.new_notebook(cells=cells, metadata=copy.deepcopy(nb.metadata))
    out.metadata["title"] = booktools.title(nb)
    return out


# --- export -----------------------------------------------------------------------------------------------------

def exporter():
    from nbconvert import SlidesExporter
    from traitlets.config import Config

    c = Config()
    c.SlidesExporter.reveal_url_prefix = "reveal.js"
    c.SlidesExporter.reveal_theme = "white"
    c.SlidesExporter.reveal_transition = "none"
    c.SlidesExporter.reveal_scroll = True
    c.SlidesExporter.reveal_number = "c/t"
    c.SlidesExporter.exclude_input_prompt = True
    c.SlidesExporter.exclude_output_prompt = True
    c.SlidesExporter.mathjax_url = "mathjax/tex-chtml.js"
    c.SlidesExporter.extra_template_basedirs = [str(TEMPLATE_DIR)]
    c.SlidesExporter.template_name = "whatruns_reveal"
    c.TagRemovePreprocessor.enabled = True
    c.TagRemovePreprocessor.remove_input_tags = {"slides-no-input"}
    return SlidesExporter(config=c)


def main(argv: list[str]) -> int:
    start = time.perf_counter()
    paths = [pathlib.Path(p).resolve() for p in argv] or booktools.chapters()
    all_chapters = booktools.chapters()
    notebooks = {p.stem: booktools.read(p) for p in all_chapters}
    titles = {stem: booktools.title(nb) for stem, nb in notebooks.items()}
    labels = {}
    for stem, nb in notebooks.items():
        for cell in nb.cells:
            if cell.cell_type == "markdown":
                lines = cell.source.splitlines()
                for i, line in enumerate(lines):
                    m = re.match(r"^\(([\w.:-]+)\)=\s*$", line)
                    if m and i + 1 < len(lines):
                        labels[m.group(1)] = (stem, re.sub(r"^#+\s*", "", lines[i + 1]))
    bib = _bib()

    (OUT / "src").mkdir(parents=True, exist_ok=True)
    for name, src in (("reveal.js", reveal_dir()), ("mathjax", mathjax_dir())):
        if not (OUT / name).exists():
            shutil.copytree(src, OUT / name, ignore=shutil.ignore_patterns("*.map", "*.scss", "css"))
    exp = exporter()
    decks = []
    for path in paths:
        nb = notebooks.get(path.stem) or booktools.read(path)
        deck = lecture(nb, Myst(booktools.glue_values(nb), titles, labels, bib))
        nbformat.write(deck, OUT / "src" / path.name)
        body, _ = exp.from_notebook_node(deck, resources={"metadata": {"name": path.stem}})
        (OUT / f"{path.stem}.slides.html").write_text(body, encoding="utf-8")
        n = sum(c.metadata.get("slideshow", {}).get("slide_type") in ("slide", "subslide") for c in deck.cells)
        decks.append((path.stem, titles.get(path.stem, path.stem), n))
        print(f"{path.stem}.slides.html: {n} slides")
    built = {stem: n for stem, _, n in decks}
    for p in all_chapters:  # decks built by an earlier run stay listed
        if p.stem not in built and (OUT / f"{p.stem}.slides.html").exists():
            built[p.stem] = sum(c.metadata.get("slideshow", {}).get("slide_type") in ("slide", "subslide")
                                for c in booktools.read(OUT / "src" / p.name).cells)
    items = "\n".join(f'<li><a href="{p.stem}.slides.html">{html.escape(titles[p.stem])}</a> '
                      f'({built[p.stem]} slides)</li>' for p in all_chapters if p.stem in built)
    (OUT / "index.html").write_text(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>whatruns: slides</title></head>"
        "<body style=\"font-family: sans-serif; max-width: 40em; margin: 2em auto\">\n<h1>whatruns: slides</h1>\n"
        "<p>One reveal.js deck per chapter. Arrows move, <kbd>S</kbd> opens the speaker notes, <kbd>Esc</kbd> "
        f"shows every slide. Nothing here loads from the network.</p>\n<ul>\n{items}\n</ul>\n</body></html>\n",
        encoding="utf-8")
    leaks = [w for w in external_loads(OUT) if not w.startswith(("reveal.js/", "mathjax/"))]
    if leaks:
        print("slides would load from another host:\n" + "\n".join(leaks), file=sys.stderr)
        return 1
    print(f"{len(decks)} decks in {OUT} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
