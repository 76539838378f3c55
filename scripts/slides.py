"""``make slides``: every chapter as a reveal.js deck for projection, in ``_build/slides/``.

    python scripts/slides.py                      # every chapter in _toc.yml
    python scripts/slides.py book/03_moe.ipynb    # some

A slide holds a title, one claim, a figure or a short table (or a few large numbers), and a few lines; the
chapter's prose goes to the speaker notes (press S). What each slide shows comes from the chapter's *outline*,
``book/slides/<chapter>.yml`` (the format is below), which points into the committed notebook by section
heading or label, glue name and cell id, so the deck is rebuilt from the notebook as it stands and the
notebooks are never changed. Every number on a slide is a glued value of the notebook, pasted in.

A chapter without an outline gets a deck all the same: its title (the introduction and takeaways as notes), one
slide per figure (titled by the figure's section, whose prose becomes the notes), and its takeaways.

Code is never shown unless asked for: by an outline's ``code:`` entry, or (in a deck without an outline) by the
cell tag ``slide`` on the notebook cell.

The outline (YAML)::

    title: ...               # optional: the deck's title (default: the notebook's first heading)
    subtitle: ...            # optional: one line under it (MyST)
    notes: [section, ...]    # optional: the title slide's notes (default: the chapter's introduction)
    takeaways: true          # optional: end with the chapter's "What to take away" (first sentence of each)
    slides:
      - title: ...           # MyST inline: math, glue roles
        claim: ...           # one or two sentences, the slide's point
        values:              # optional: a few large numbers, each a glue role and a label
          - {glue: "mixtral_total", label: stored}
        figure: 03b352f1     # one of: a cell id whose image to show ("id:2" for its second image);
        table: {cell: id, rows: [1, "Mixtral 8x7B"], columns: [0, 2]}   #  a table: from a markdown cell,
                             #   or a cell's markdown output; rows by position (1 = first) or first-column text;
                             #   or {header: [...], rows: [[...]]} written here from glue roles
        text: {cell: id, lines: [1, 6]}   # printed output of a cell, lines 1 to 6
        math: {cell: id, n: 1}            # the n-th display formula ($$...$$) of a markdown cell
        code: id             # the source of a code cell
        exercise: 2          # the chapter's exercise 2 (its answer goes to the notes)
        points: [...]        # optional: up to four short lines (MyST)
        link: {calculator: "model=mixtral-8x7b&experts=16", text: "..."}   # optional: a link line
        notes: sec-router    # the section(s) whose prose is the speaker notes: a label or a heading
        say: ...             # optional: words for the lecturer, put before the section's prose

Offline: reveal.js (vendored by the ``sphinx-revealjs`` package) and MathJax 3 (vendored by
``sphinx-mathjax-offline``) are copied beside the decks, with the figures as PNG files; the decks load nothing
else. The script fails if a deck would load anything from another host, and it fails, naming each one, on an
outline entry that points at something the notebook does not have (a cell id, a glue name, a section).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import importlib.util
import pathlib
import re
import shutil
import sys
import textwrap
import time

import jinja2
import yaml

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import booktools  # noqa: E402
from bookext import external_loads  # noqa: E402

ROOT = booktools.ROOT
OUT = ROOT / "_build" / "slides"
OUTLINES = ROOT / "book" / "slides"
TEMPLATE_DIR = pathlib.Path(__file__).resolve().parent / "slides_template"
TAKEAWAY = "What to take away"
SITE_FROM_SLIDES = "../html"  # _build/slides -> _build/html, where the calculator page is
SLIDE_TAG = "slide"  # a code cell with this tag is shown in a deck without an outline
MAX_POINTS = 4
TAKEAWAY_LINES, TAKEAWAY_LINE_CHARS = 16, 86  # lines of takeaways a slide holds, and characters to a line


class OutlineError(Exception):
    """An outline that points at something the notebook does not hold (or is malformed)."""


def _package_dir(name: str) -> pathlib.Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed (make installs it from requirements.txt)")
    return pathlib.Path(list(spec.submodule_search_locations)[0])


def reveal_dir() -> pathlib.Path:
    return _package_dir("sphinx_revealjs") / "_static" / "revealjs"


def mathjax_dir() -> pathlib.Path:
    return _package_dir("sphinx-mathjax-offline") / "static" / "mathjax"


# --- MyST -> what a plain markdown renderer shows --------------------------------------------------------------

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
    """Turns one chapter's MyST markdown into CommonMark plus HTML. A glue key the notebook lacks is reported
    to ``missing`` (default: a warning, and ``[key?]`` in the text)."""

    ROLE = re.compile(r"\{([\w:-]+)\}`([^`]*)`")
    # a raw HTML link from a chapter to another page of the site (the calculator with a preset: <a
    # href="calculator.html?model=...">): from a deck, that page is in the built site, not beside the decks
    PAGE_LINK = re.compile(r'href="([\w-]+\.html(?:[?#][^"]*)?)"')

    def __init__(self, values: dict[str, str], titles: dict[str, str], labels: dict[str, tuple[str, str]],
                 bib: dict[str, tuple[str, str]], missing=None):
        self.values, self.titles, self.labels, self.bib = values, titles, labels, bib
        self.missing = missing

    def _missing(self, key: str) -> str:
        if self.missing is not None:
            return self.missing(key)
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
        text = self.PAGE_LINK.sub(lambda m: f'href="{SITE_FROM_SLIDES}/book/{m.group(1)}"', text)
        return self.ROLE.sub(self._role, self._fences(text))


def _markdown(notes: bool = False):
    """CommonMark with tables and raw HTML; math (``$``, ``$$``, amsmath environments) is kept for MathJax as
    ``\\(...\\)`` and ``\\[...\\]``, so that a dollar sign in prose is never taken for math. For speaker notes
    (``notes=True``) math stays TeX source: the speaker view is a separate window without MathJax's styles."""
    from markdown_it import MarkdownIt
    from mdit_py_plugins.amsmath import amsmath_plugin
    from mdit_py_plugins.dollarmath import dollarmath_plugin

    md = MarkdownIt("commonmark", {"html": True}).enable("table")
    md.use(dollarmath_plugin, double_inline=True).use(amsmath_plugin)
    esc = html.escape
    if notes:
        tex = lambda self, t, i, o, e: f'<span class="tex">{esc(t[i].content.strip())}</span>'  # noqa: E731
        for rule in ("math_inline", "math_inline_double", "math_block", "math_block_label", "amsmath"):
            md.add_render_rule(rule, tex)
        return md
    md.add_render_rule("math_inline", lambda self, t, i, o, e: f"\\({esc(t[i].content)}\\)")
    md.add_render_rule("math_inline_double", lambda self, t, i, o, e: f"\\[{esc(t[i].content)}\\]")
    md.add_render_rule("math_block", lambda self, t, i, o, e: f'<div class="math">\\[{esc(t[i].content)}\\]</div>\n')
    md.add_render_rule("math_block_label",
                       lambda self, t, i, o, e: f'<div class="math">\\[{esc(t[i].content)}\\]</div>\n')
    md.add_render_rule("amsmath", lambda self, t, i, o, e: f'<div class="math">\\[{esc(t[i].content)}\\]</div>\n')
    return md


MD, MD_NOTES = _markdown(), _markdown(notes=True)


def render(text: str, notes: bool = False) -> str:
    """Markdown (already turned into CommonMark by :class:`Myst`) as HTML (for the speaker notes: math as TeX)."""
    return (MD_NOTES if notes else MD).render(text).strip()


def render_inline(text: str) -> str:
    """One line of markdown as inline HTML (no enclosing paragraph)."""
    out = render(text)
    m = re.fullmatch(r"<p>(.*)</p>", out, re.S)
    return m.group(1) if m else out


# --- the notebook, read for slides ----------------------------------------------------------------------------

HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
LABEL = re.compile(r"^\(([\w.:-]+)\)=\s*$")


@dataclasses.dataclass
class Section:
    level: int
    heading: str
    label: str | None
    text: list[str]            # markdown, up to the next heading of any level
    cells: list                # the code cells in it


def sections(nb) -> list[Section]:
    """The notebook cut at its headings (outside code fences), each with its own prose and code cells; the
    part before the first heading is a section of level 0."""
    out = [Section(0, "", None, [], [])]
    for cell in nb.cells:
        if cell.cell_type == "code":
            out[-1].cells.append(cell)
            continue
        if cell.cell_type != "markdown":
            continue
        kept, label, fence = [], None, False
        for line in cell.source.splitlines():
            if line.lstrip().startswith(("```", "~~~")):
                fence = not fence
            m = None if fence else HEADING.match(line)
            if m:
                if kept:
                    out[-1].text.append("\n".join(kept).strip("\n"))
                out.append(Section(len(m.group(1)), m.group(2), label, [], []))
                kept, label = [], None
                continue
            lm = None if fence else LABEL.match(line)
            if lm:
                label = lm.group(1)
                continue
            if label and line.strip():
                kept.append(f"({label})=")  # a label not followed by a heading: keep the line as it was
                label = None
            kept.append(line)
        if kept and "\n".join(kept).strip():
            out[-1].text.append("\n".join(kept).strip("\n"))
    return out


def _split_sentences(text: str) -> list[str]:
    """Sentences of a paragraph, not split inside math or after common abbreviations."""
    masked = re.sub(r"\$[^$]*\$|`[^`]*`", lambda m: "x" * len(m.group(0)), text)
    cuts, start = [], 0
    for m in re.finditer(r"(?<=[.!?])\s+(?=[A-Z(*\"'`$])", masked):
        before = masked[max(0, m.start() - 6):m.start()]
        if re.search(r"(\be\.g\.|\bi\.e\.|\bet al\.|\bvs\.|\bcf\.|\bFig\.|\bEq\.)$", before):
            continue
        cuts.append(text[start:m.start()].strip())
        start = m.end()
    cuts.append(text[start:].strip())
    return [c for c in cuts if c]


def _list_items(text: str) -> list[str]:
    """The items of a markdown bullet or numbered list (continuation lines joined)."""
    items = []
    for line in text.splitlines():
        if re.match(r"^\s*(?:[-*+]|\d+\.)\s+", line) and not line.startswith("  "):
            items.append(re.sub(r"^\s*(?:[-*+]|\d+\.)\s+", "", line))
        elif items and line.strip():
            items[-1] += " " + line.strip()
    return items


def exercises(text: str) -> dict[int, tuple[str, str]]:
    """n -> (question, answer) from an Exercises section: numbered items outside admonitions are the questions;
    answers are the numbered items of an "Answers" admonition, or the body of an "Answer" admonition that
    follows a question."""
    questions, answers = {}, {}
    depth, kind, last_q, body = 0, "", None, []
    for line in text.splitlines():
        m = re.match(r"^(:{3,})\{admonition\}\s*(.*)$", line)
        if m and depth == 0:
            depth, kind, body = 1, m.group(2).strip().lower(), []
            continue
        if depth and re.match(r"^:{3,}\s*$", line):
            depth = 0
            block = "\n".join(l for l in body if not re.match(r"^:\w+:", l))
            if kind == "answers":
                for i, item in enumerate(_numbered(block), 1):
                    answers[i] = item
            elif last_q is not None:
                answers[last_q] = block.strip()
            continue
        if depth:
            body.append(line)
            continue
        q = re.match(r"^(\d+)\.\s+(.*)$", line)
        if q:
            last_q = int(q.group(1))
            questions[last_q] = q.group(2)
        elif last_q is not None and line.startswith("   ") and line.strip():
            questions[last_q] += " " + line.strip()
    return {n: (questions[n], answers.get(n, "")) for n in questions}


def _numbered(text: str) -> list[str]:
    items = []
    for line in text.splitlines():
        m = re.match(r"^\d+\.\s+(.*)$", line)
        if m:
            items.append(m.group(1))
        elif items and line.strip():
            items[-1] += "\n" + line
    return items


def parse_table(text: str) -> tuple[list[str], list[list[str]]] | None:
    """The first GFM table in ``text``: (header cells, body rows), cells as markdown."""
    lines = text.splitlines()
    for i in range(len(lines) - 1):
        if lines[i].lstrip().startswith("|") and re.match(r"^\s*\|?\s*:?-{2,}", lines[i + 1]):
            rows = []
            for line in lines[i:]:
                if not line.lstrip().startswith("|"):
                    break
                rows.append([c.strip() for c in line.strip().strip("|").split("|")])
            return rows[0], rows[2:]
    return None


class Chapter:
    """One notebook as the decks read it: its glued values, sections, cells by id, figures."""

    def __init__(self, path: pathlib.Path, nb, titles, labels, bib):
        self.path, self.stem, self.nb = path, path.stem, nb
        self.title = booktools.title(nb)
        self.values = booktools.glue_values(nb)
        self.sections = sections(nb)
        self.cells = {c.get("id"): c for c in nb.cells if c.get("id")}
        self.errors: list[str] = []
        self.myst = Myst(self.values, titles, labels, bib, missing=self._no_glue)
        self.images: dict[str, str] = {}  # file name -> base64 PNG, written beside the deck

    def _no_glue(self, key: str) -> str:
        self.errors.append(f"glue key {key!r} is not in the notebook's outputs")
        return f"[{key}?]"

    def md(self, text: str, notes: bool = False) -> str:
        return render(self.myst(text), notes)

    def say(self, text: str) -> str:
        """Markdown for the speaker notes."""
        return self.md(text, notes=True)

    def inline(self, text: str) -> str:
        return render_inline(self.myst(str(text)))

    def section(self, ref: str) -> Section | None:
        """A section by its label (``sec-router``) or its heading text."""
        for s in self.sections:
            if s.label == ref:
                return s
        for s in self.sections:
            if s.heading and s.heading.strip().lower() == str(ref).strip().lower():
                return s
        return None

    def section_of(self, cell) -> Section:
        for s in self.sections:
            if any(c is cell for c in s.cells):
                return s
        return self.sections[0]

    def cell(self, cell_id: str, kind: str | None = None):
        c = self.cells.get(str(cell_id))
        if c is None:
            self.errors.append(f"no cell with id {cell_id!r}")
        elif kind and c.cell_type != kind:
            self.errors.append(f"cell {cell_id!r} is a {c.cell_type} cell, not {kind}")
            return None
        return c

    def figure(self, ref: str) -> str:
        cell_id, _, n = str(ref).partition(":")
        cell = self.cell(cell_id, "code")
        if cell is None:
            return ""
        pngs = [o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
        i = int(n or 1)
        if not 1 <= i <= len(pngs):
            self.errors.append(f"cell {cell_id!r} has {len(pngs)} image(s), not an image {i}")
            return ""
        name = f"img/{self.stem}-{cell_id}-{i}.png"
        self.images[name] = pngs[i - 1]
        return f'<figure class="figure"><img src="{name}" alt="figure of cell {cell_id}"></figure>'

    def figures(self) -> list:
        """(cell, image number) of every image output, in order."""
        return [(c, i) for c in self.nb.cells if c.cell_type == "code"
                for i, o in enumerate([o for o in c.get("outputs", []) if "image/png" in o.get("data", {})], 1)]

    def notes(self, refs) -> str:
        refs = refs if isinstance(refs, list) else [refs]
        parts = []
        for ref in refs:
            s = self.section(ref)
            if s is None:
                self.errors.append(f"no section with the label or heading {ref!r}")
                continue
            body = "\n\n".join(s.text)
            parts.append(f"**{s.heading}**\n\n{body}" if s.heading else body)
        return self.say("\n\n".join(parts))

    def takeaways(self) -> list[str]:
        s = self.section(TAKEAWAY)
        return _list_items("\n\n".join(s.text)) if s else []

    def exercises(self) -> dict[int, tuple[str, str]]:
        s = self.section("Exercises")
        return exercises("\n\n".join(s.text)) if s else {}


# --- slides -----------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Slide:
    title: str
    notes: str
    claim: str = ""
    body: str = ""
    points: list[str] = dataclasses.field(default_factory=list)
    link: str = ""
    kind: str = "content"  # title | content | takeaways | exercise
    body_kind: str = ""    # figure | table | text | math | code | values | exercise


SLIDE_KEYS = {"title", "claim", "values", "figure", "table", "text", "math", "code", "exercise", "points", "link",
              "notes", "say"}
BODY_KEYS = ("figure", "table", "text", "math", "code", "exercise")
VALUE_KEYS = {"glue", "label", "unit"}
DECK_KEYS = {"title", "subtitle", "notes", "takeaways", "slides"}


def _table_html(ch: Chapter, header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    def cells(tag, row):
        out = []
        for i, c in enumerate(row):
            a = f' class="{align[i]}"' if align and i < len(align) and align[i] else ""
            out.append(f"<{tag}{a}>{ch.inline(c)}</{tag}>")
        return "".join(out)
    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    size = 28 if len(rows) <= 4 else 25 if len(rows) <= 7 else 22  # px: fewer rows, larger type
    return f'<table class="table" style="font-size: {size}px"><thead><tr>{cells("th", header)}</tr></thead><tbody>{body}</tbody></table>'


def _table(ch: Chapter, spec) -> str:
    if isinstance(spec, (str, int)):
        spec = {"cell": str(spec)}
    if not isinstance(spec, dict):
        ch.errors.append(f"table: expected a cell id or a mapping, got {spec!r}")
        return ""
    if "header" in spec:
        return _table_html(ch, [str(h) for h in spec["header"]], [[str(c) for c in r] for r in spec.get("rows", [])])
    cell = ch.cell(spec.get("cell"))
    if cell is None:
        return ""
    if cell.cell_type == "markdown":
        source = cell.source
    else:
        source = "\n".join(o.get("data", {}).get("text/markdown", "") for o in cell.get("outputs", []))
    found = parse_table(source)
    if found is None:
        ch.errors.append(f"cell {spec.get('cell')!r} holds no markdown table")
        return ""
    header, rows = found
    align_row = next(l for l in source.splitlines() if re.match(r"^\s*\|?\s*:?-{2,}", l))
    align = ["right" if c.strip().endswith(":") and not c.strip().startswith(":") else ""
             for c in align_row.strip().strip("|").split("|")]
    if "rows" in spec:
        picked = []
        for r in spec["rows"]:
            if isinstance(r, int):
                if not 1 <= r <= len(rows):
                    ch.errors.append(f"table of cell {spec['cell']!r} has {len(rows)} rows, not a row {r}")
                    continue
                picked.append(rows[r - 1])
            else:
                match = [row for row in rows if row[0].strip() == str(r)]
                if not match:
                    ch.errors.append(f"table of cell {spec['cell']!r} has no row {r!r}")
                picked += match[:1]
        rows = picked
    if "columns" in spec:
        idx = []
        for c in spec["columns"]:
            i = c if isinstance(c, int) else next((j for j, h in enumerate(header) if h == c), None)
            if i is None or not 0 <= i < len(header):
                ch.errors.append(f"table of cell {spec['cell']!r} has no column {c!r}")
                continue
            idx.append(i)
        header, rows, align = [header[i] for i in idx], [[r[i] for i in idx] for r in rows], [align[i] for i in idx]
    return _table_html(ch, header, rows, align)


PRE_WIDTH, PRE_HEIGHT = 1130, 440  # px a printed block may take on the slide (with a claim above it)
PRE_FONT = (13, 24)  # smallest and largest font size, px; monospace advance ~0.61 em, lines 1.3 em


def _pre(text: str) -> str:
    """Printed text at the largest font size (within PRE_FONT) at which its longest line and all its lines fit; a
    line too long for the slide even at the smallest size is wrapped, its continuation indented."""
    most = int(PRE_WIDTH / (0.61 * PRE_FONT[0]))   # characters a line holds at the smallest size
    wrap = textwrap.TextWrapper(width=most, subsequent_indent="    ", break_long_words=True, break_on_hyphens=False)
    lines = [part for line in text.rstrip().splitlines() for part in (wrap.wrap(line) if len(line) > most else [line])]
    lines = lines or [""]
    text = "\n".join(lines)
    widest = max(len(line) for line in lines)
    size = min(PRE_FONT[1], PRE_WIDTH / (0.61 * max(widest, 1)), PRE_HEIGHT / (1.3 * len(lines)))
    size = max(PRE_FONT[0], int(size))
    return f'<pre class="output" style="font-size: {size}px">{html.escape(text.rstrip())}</pre>'


def _text(ch: Chapter, spec) -> str:
    if isinstance(spec, (str, int)):
        spec = {"cell": str(spec)}
    cell = ch.cell(spec.get("cell"), "code")
    if cell is None:
        return ""
    text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
    lines = text.rstrip("\n").splitlines()
    if "lines" in spec:
        a, b = spec["lines"]
        if not (1 <= a <= b <= len(lines)):
            ch.errors.append(f"cell {spec['cell']!r} printed {len(lines)} lines, not lines {a} to {b}")
        lines = lines[a - 1:b]
    if not lines:
        ch.errors.append(f"cell {spec.get('cell')!r} printed nothing")
    return _pre("\n".join(lines))


def _math(ch: Chapter, spec) -> str:
    if isinstance(spec, str):
        spec = {"cell": spec}
    cell = ch.cell(spec.get("cell"), "markdown")
    if cell is None:
        return ""
    blocks = re.findall(r"\$\$(.+?)\$\$", cell.source, re.S)
    n = int(spec.get("n", 1))
    if not 1 <= n <= len(blocks):
        ch.errors.append(f"cell {spec['cell']!r} has {len(blocks)} display formula(s), not a formula {n}")
        return ""
    return f'<div class="math">\\[{html.escape(blocks[n - 1].strip())}\\]</div>'


def _values(ch: Chapter, items) -> str:
    out = []
    for item in items:
        if not isinstance(item, dict) or "glue" not in item or "label" not in item or set(item) - VALUE_KEYS:
            ch.errors.append(f"values: each entry has glue, label and perhaps unit, got {item!r}")
            continue
        value = ch.inline(f"{{glue:text}}`{item['glue']}`")
        out.append(f'<div class="value"><span class="number">{value}{html.escape(str(item.get("unit", "")))}'
                   f'</span><span class="label">{ch.inline(item["label"])}</span></div>')
    return f'<div class="values">{"".join(out)}</div>'


def _link(ch: Chapter, spec) -> str:
    if not isinstance(spec, dict) or ("calculator" not in spec and "href" not in spec):
        ch.errors.append(f"link: expected calculator or href, got {spec!r}")
        return ""
    if "calculator" in spec:
        href = f"{SITE_FROM_SLIDES}/book/calculator.html?{spec['calculator']}"
        text = spec.get("text", "Try it in the calculator")
    else:
        href, text = spec["href"], spec.get("text", spec["href"])
    return f'<a class="link" href="{html.escape(href, quote=True)}">{ch.inline(text)}</a>'


def outline_slide(ch: Chapter, entry: dict, where: str) -> Slide:
    if not isinstance(entry, dict) or "title" not in entry:
        raise OutlineError(f"{where}: each slide needs a title")
    unknown = set(entry) - SLIDE_KEYS
    if unknown:
        ch.errors.append(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    bodies = [k for k in BODY_KEYS if k in entry]
    if len(bodies) > 1:
        ch.errors.append(f"{where}: one of {', '.join(bodies)} per slide")
    points = entry.get("points", [])
    if len(points) > MAX_POINTS:
        ch.errors.append(f"{where}: {len(points)} points; a slide holds at most {MAX_POINTS}")
    if "notes" not in entry and "say" not in entry and "exercise" not in entry:
        ch.errors.append(f"{where}: no notes (a section to take them from) and nothing to say")
    s = Slide(title=ch.inline(entry["title"]), notes="", claim=ch.inline(entry.get("claim", "")) if "claim" in entry else "",
              points=[ch.inline(p) for p in points])
    body = []
    if "values" in entry:
        body.append(_values(ch, entry["values"]))
        s.body_kind = "values"
    kind = bodies[0] if bodies else None
    if kind == "figure":
        body.append(ch.figure(entry["figure"]))
    elif kind == "table":
        body.append(_table(ch, entry["table"]))
    elif kind == "text":
        body.append(_text(ch, entry["text"]))
    elif kind == "math":
        body.append(_math(ch, entry["math"]))
    elif kind == "code":
        cell = ch.cell(entry["code"], "code")
        body.append(_pre(cell.source) if cell is not None else "")
    notes = []
    if kind == "exercise":
        n = entry["exercise"]
        found = ch.exercises().get(n)
        if found is None:
            ch.errors.append(f"{where}: the chapter has no exercise {n}")
        else:
            body.append(f'<div class="exercise">{ch.md(found[0])}</div>')
            if found[1]:
                notes.append(ch.say("**Answer.** " + found[1]))
        s.kind = "exercise"
    if kind:
        s.body_kind = kind
    s.body = "".join(body)
    if "link" in entry:
        s.link = _link(ch, entry["link"])
    if "say" in entry:
        notes.insert(0, ch.say(str(entry["say"])))
    if "notes" in entry:
        notes.append(ch.notes(entry["notes"]))
    s.notes = "\n".join(n for n in notes if n)
    if not s.notes.strip():
        ch.errors.append(f"{where}: the speaker notes came out empty")
    return s


def takeaway_slides(ch: Chapter) -> list[Slide]:
    """The chapter's closing list, first sentence of each item on the slide, every item in full in the notes;
    split over two slides or more when the sentences are long."""
    items = ch.takeaways()
    if not items:
        return []
    groups, size = [[]], 0.0
    for item in items:
        first = _split_sentences(item)[0]
        plain = re.sub(r"\{[\w:-]+\}|[`*$\\{}]|\\\w+", "", first)
        lines = -(-len(plain) // TAKEAWAY_LINE_CHARS) + 0.4  # wrapped lines, and the gap between items
        if groups[-1] and size + lines > TAKEAWAY_LINES:
            groups.append([])
            size = 0.0
        groups[-1].append((first, item))
        size += lines
    out = []
    for i, group in enumerate(groups, 1):
        title = TAKEAWAY + (f" ({i}/{len(groups)})" if len(groups) > 1 else "")
        notes = ch.say("**" + TAKEAWAY + "** (the chapter's closing list, in full):\n\n"
                      + "\n".join(f"- {full}" for _, full in group))
        out.append(Slide(title=html.escape(title), notes=notes, points=[ch.inline(f) for f, _ in group],
                         kind="takeaways"))
    return out


def title_slide(ch: Chapter, outline: dict) -> Slide:
    intro = ch.sections[1] if len(ch.sections) > 1 and ch.sections[1].level == 1 else ch.sections[0]
    if "notes" in outline:
        notes = ch.notes(outline["notes"])
    else:
        notes = ch.say("\n\n".join(intro.text))
    items = ch.takeaways()
    if items:
        notes += "\n" + ch.say(f"**{TAKEAWAY}** (the chapter's closing list):\n\n" + "\n".join(f"- {t}" for t in items))
    return Slide(title=ch.inline(outline.get("title", ch.title)), notes=notes, kind="title",
                 claim=ch.inline(outline["subtitle"]) if "subtitle" in outline else "")


def fallback_slides(ch: Chapter) -> list[Slide]:
    """A deck for a chapter without an outline: one slide per figure (and per code cell tagged ``slide``),
    titled by its section, with the section's prose as notes; or, if it has none, one slide per section."""
    out = []
    for cell in ch.nb.cells:
        if cell.cell_type != "code":
            continue
        s = ch.section_of(cell)
        title = ch.inline(s.heading or ch.title)
        notes = ch.say("\n\n".join(s.text)) or ch.say(f"From the section *{s.heading or ch.title}*.")
        if SLIDE_TAG in cell.metadata.get("tags", []):
            out.append(Slide(title=title, notes=notes, body=_pre(cell.source), body_kind="code"))
        for c, i in [(c, i) for c, i in ch.figures() if c is cell]:
            out.append(Slide(title=title, notes=notes, body=ch.figure(f"{c.get('id')}:{i}"), body_kind="figure"))
    if not out:
        for s in ch.sections:
            if s.level == 2 and s.text and s.heading not in (TAKEAWAY, "Exercises"):
                first = _split_sentences(re.sub(r"\s+", " ", s.text[0]))[0]
                out.append(Slide(title=ch.inline(s.heading), claim=ch.inline(first), notes=ch.say("\n\n".join(s.text))))
    return out


def deck(ch: Chapter, outline: dict | None) -> list[Slide]:
    if outline is None:
        return [title_slide(ch, {})] + fallback_slides(ch) + takeaway_slides(ch)
    if not isinstance(outline, dict) or not isinstance(outline.get("slides"), list):
        raise OutlineError("an outline is a mapping with a list of slides")
    unknown = set(outline) - DECK_KEYS
    if unknown:
        ch.errors.append(f"unknown key(s) {', '.join(sorted(unknown))}")
    slides = [title_slide(ch, outline)]
    for i, entry in enumerate(outline["slides"], 1):
        slides.append(outline_slide(ch, entry, f"slide {i}"))
    if outline.get("takeaways", True):
        slides += takeaway_slides(ch)
    return slides


# --- writing ---------------------------------------------------------------------------------------------------

def _env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)), autoescape=False,
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def write_deck(ch: Chapter, slides: list[Slide], outline_used: bool) -> pathlib.Path:
    for name, data in ch.images.items():
        path = OUT / name
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = base64.b64decode(data)
        if not path.exists() or path.read_bytes() != blob:
            path.write_bytes(blob)
    page = _env().get_template("deck.html.j2").render(
        title=html.escape(ch.title), chapter=ch.stem, slides=slides, outline=outline_used,
        source=f"book/slides/{ch.stem}.yml" if outline_used else f"book/{ch.path.name} (no outline)")
    out = OUT / f"{ch.stem}.slides.html"
    out.write_text(page, encoding="utf-8")
    return out


def load_outline(stem: str):
    path = OUTLINES / f"{stem}.yml"
    if not path.exists():
        return None
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise OutlineError(f"{path.relative_to(ROOT)}: not valid YAML ({' '.join(str(e).split())})") from None


def _labels(notebooks) -> dict[str, tuple[str, str]]:
    labels = {}
    for stem, nb in notebooks.items():
        for s in sections(nb):
            if s.label:
                labels[s.label] = (stem, s.heading)
    return labels


def main(argv: list[str]) -> int:
    start = time.perf_counter()
    all_chapters = booktools.chapters()
    paths = [pathlib.Path(p).resolve() for p in argv] or all_chapters
    notebooks = {p.stem: booktools.read(p) for p in all_chapters}
    titles = {stem: booktools.title(nb) for stem, nb in notebooks.items()}
    labels, bib = _labels(notebooks), _bib()

    OUT.mkdir(parents=True, exist_ok=True)
    for name, src in (("reveal.js", reveal_dir()), ("mathjax", mathjax_dir())):
        if not (OUT / name).exists():
            shutil.copytree(src, OUT / name, ignore=shutil.ignore_patterns("*.map", "*.scss", "css"))
    shutil.copyfile(TEMPLATE_DIR / "deck.css", OUT / "deck.css")
    failed = []
    for path in paths:
        nb = notebooks.get(path.stem) or booktools.read(path)
        ch = Chapter(path, nb, titles, labels, bib)
        try:
            outline = load_outline(path.stem)
            slides = deck(ch, outline)
        except OutlineError as e:
            ch.errors.append(str(e))
            slides, outline = [], None
        if ch.errors:
            where = f"book/slides/{path.stem}.yml" if (OUTLINES / f"{path.stem}.yml").exists() else path.name
            failed += [f"{where}: {e}" for e in ch.errors]
            continue
        write_deck(ch, slides, outline is not None)
        print(f"{path.stem}.slides.html: {len(slides)} slides" + ("" if outline is not None else " (no outline)"))
    if failed:
        print("slides: the outlines point at things the notebooks do not hold:\n  " + "\n  ".join(failed),
              file=sys.stderr)
        return 1
    write_index(all_chapters, titles)
    leaks = [w for w in external_loads(OUT) if not w.startswith(("reveal.js/", "mathjax/"))]
    if leaks:
        print("slides would load from another host:\n" + "\n".join(leaks), file=sys.stderr)
        return 1
    print(f"{len(paths)} decks in {OUT} ({time.perf_counter() - start:.1f} s)")
    return 0


def deck_slide_count(path: pathlib.Path) -> int:
    """Slides in a written deck (each is a <section> with data-slide)."""
    return path.read_text(encoding="utf-8").count('<section data-slide="')


def write_index(chapters, titles):
    rows = []
    for p in chapters:
        deck_path = OUT / f"{p.stem}.slides.html"
        if not deck_path.exists():
            continue
        pdf = OUT / "handout" / f"{p.stem}.pdf"
        extra = f' &middot; <a href="handout/{p.stem}.pdf">handout (PDF)</a>' if pdf.exists() else ""
        rows.append(f'<li><a href="{deck_path.name}">{html.escape(titles[p.stem])}</a> '
                    f'({deck_slide_count(deck_path)} slides){extra}</li>')
    page = _env().get_template("index.html.j2").render(items="\n".join(rows))
    (OUT / "index.html").write_text(page, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
