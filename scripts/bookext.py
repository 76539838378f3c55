"""Sphinx extension for the whatruns site (loaded by ``_config.yml``, ``sphinx: local_extensions``).

- ``{chapter-times}``: a table of the chapters, with the seconds each took the last time it was executed
  (read from the notebooks, see ``booktools.run_seconds``), their figures and exercises.
- ``{chapter-exercises}``: every chapter's exercises and answers, read from the notebooks, glued values pasted.
- An offline guard: after the build, any page or stylesheet that would load a script, style, font or image
  from another host is a warning (so ``make book``, which runs with ``-W``, fails).
"""

from __future__ import annotations

import html.parser
import pathlib
import re

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

import booktools

logger = logging.getLogger(__name__)

LABEL_LINE = re.compile(r"^\([\w.:-]+\)=\s*$")


def _chapter_docs(env):
    """(docname relative to book/, notebook path, notebook) for every chapter the toc lists, intro first."""
    root = pathlib.Path(env.srcdir)
    out = []
    for path in booktools.chapters(root):
        out.append((path.stem, path, booktools.read(path)))
    return out


def _exercise_count(cells) -> int:
    """Numbered items of the section outside its (answer) admonitions."""
    n, depth = 0, 0
    for cell in cells:
        if cell.cell_type != "markdown":
            continue
        for line in cell.source.splitlines():
            if re.match(r"^:{3,}\{", line):
                depth += 1
            elif re.match(r"^:{3,}\s*$", line):
                depth = max(depth - 1, 0)
            elif depth == 0 and re.match(r"^\d+\.\s", line):
                n += 1
    return n


class _MystDirective(SphinxDirective):
    has_content = False

    def parse_myst(self, text: str) -> list[nodes.Node]:
        container = nodes.container()
        self.state.nested_parse(StringList(text.splitlines(), source=self.env.docname),
                                self.content_offset, container)
        return container.children


class ChapterTimes(_MystDirective):
    """The table on the instructors page: run time, figures and exercises of each chapter."""

    def run(self):
        rows = ["| Chapter | Code cells | Figures | Exercises | Seconds to run | Last run |",
                "|:--|--:|--:|--:|--:|:--|"]
        total = 0.0
        for doc, path, nb in _chapter_docs(self.env):
            self.env.note_dependency(str(path))
            seconds = booktools.run_seconds(nb)
            total += seconds or 0.0
            stamps = [c.metadata.get("execution", {}).get("shell.execute_reply", "")
                      for c in nb.cells if c.cell_type == "code"]
            day = max(stamps)[:10].replace("-", "\u2011") if any(stamps) else "not recorded"  # no line break
            code = sum(c.cell_type == "code" for c in nb.cells)
            n_ex = _exercise_count(booktools.section(nb, "Exercises"))
            secs = f"{seconds:.0f}" if seconds is not None else "not recorded"
            rows.append(f"| {{doc}}`{doc}` | {code} | {booktools.figures(nb)} | {n_ex} | {secs} | {day} |")
        rows.append(f"| **All** | | | | **{total:.0f}** | |")
        return self.parse_myst("\n".join(rows))


class ChapterExercises(_MystDirective):
    """Each chapter's exercises and collapsible answers, as the chapter states them."""

    def run(self):
        parts = []
        for doc, path, nb in _chapter_docs(self.env):
            self.env.note_dependency(str(path))
            cells = booktools.section(nb, "Exercises")
            if not cells:
                continue
            values = booktools.glue_values(nb)
            text = "\n\n".join(c.source for c in cells if c.cell_type == "markdown")
            try:
                text = booktools.paste_glue(text, values)
            except KeyError as err:
                logger.warning(f"{doc}: {err}", location=(self.env.docname, self.lineno))
                continue
            text = "\n".join(line for line in text.splitlines() if not LABEL_LINE.match(line))
            parts.append(f"**{{doc}}`{doc}`**\n\n{text}")
        return self.parse_myst("\n\n".join(parts))


class _ExternalLoads(html.parser.HTMLParser):
    """Collects URLs that a browser would fetch from another host when it renders the page."""

    LOADS = {"script": "src", "img": "src", "iframe": "src", "source": "src", "video": "src",
             "audio": "src", "embed": "src", "object": "data"}
    LINK_RELS = {"stylesheet", "preload", "modulepreload", "icon", "shortcut", "manifest", "prefetch",
                 "preconnect", "dns-prefetch", "apple-touch-icon"}

    def __init__(self):
        super().__init__()
        self.found = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        url = None
        if tag in self.LOADS:
            url = attrs.get(self.LOADS[tag])
        elif tag == "link" and set((attrs.get("rel") or "").lower().split()) & self.LINK_RELS:
            url = attrs.get("href")
        if url and _external(url):
            self.found.append(f"<{tag}> {url}")
        for m in re.finditer(r"url\(\s*['\"]?([^'\")]+)", attrs.get("style") or ""):
            if _external(m.group(1)):
                self.found.append(f"style {m.group(1)}")


def _external(url: str) -> bool:
    return bool(re.match(r"^(https?:)?//", url.strip(), re.I))


def external_loads(outdir: pathlib.Path) -> list[str]:
    """Everything under ``outdir`` that would make a browser leave the machine: ``file: what``."""
    found = []
    for page in sorted(outdir.rglob("*.html")):
        if "_static" in page.relative_to(outdir).parts:
            continue  # vendored assets (MathJax, reveal.js plugins) are loaded only by the pages below
        parser = _ExternalLoads()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        found += [f"{page.relative_to(outdir)}: {what}" for what in parser.found]
    for css in sorted(outdir.rglob("*.css")):
        text = css.read_text(encoding="utf-8", errors="replace")
        for m in re.finditer(r"(?:url\(\s*['\"]?|@import\s+['\"])((?:https?:)?//[^'\")\s]+)", text):
            found.append(f"{css.relative_to(outdir)}: {m.group(1)}")
    return found


def _check_offline(app, exc):
    if exc is not None or app.builder.format != "html":
        return
    for what in external_loads(pathlib.Path(app.outdir)):
        logger.warning(f"the site would load from another host: {what}")


def _drop_thebe(app, pagename, templatename, context, doctree):
    """No page runs code in the browser (no launch buttons), so thebe's scripts are left out: its config
    names a CDN, and sphinx-thebe adds it twice, which the browser reports as an error."""
    def keep(asset):
        body = getattr(asset, "attributes", {}).get("body", "")
        return "thebe" not in (getattr(asset, "filename", None) or str(asset)) and "THEBE_JS_URL" not in body

    for key in ("script_files", "css_files"):
        if key in context:
            context[key] = [a for a in context[key] if keep(a)]


def setup(app):
    app.connect("html-page-context", _drop_thebe, priority=900)
    app.add_directive("chapter-times", ChapterTimes)
    app.add_directive("chapter-exercises", ChapterExercises)
    app.connect("build-finished", _check_offline, priority=900)
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}
