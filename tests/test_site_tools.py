"""The site's tooling (scripts/booktools.py, bookext.py, slides.py): what it reads from the chapters, the offline
guard, and the lecture metadata of `make slides`. No browser needed (tests/browser has those checks)."""

import pathlib
import sys

import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import booktools  # noqa: E402
import bookext  # noqa: E402
import slides  # noqa: E402


def md(text, **meta):
    return nbformat.v4.new_markdown_cell(text, metadata=meta)


def code(text, outputs=(), **meta):
    cell = nbformat.v4.new_code_cell(text, metadata=meta)
    cell.outputs = list(outputs)
    return cell


def glued(key, value):
    return nbformat.v4.new_output("display_data", data={"application/papermill.record/text/plain": repr(value)},
                                  metadata={"scrapbook": {"name": key, "mime_prefix": "application/papermill.record/"}})


def chapter():
    return nbformat.v4.new_notebook(cells=[
        md("# A chapter\n\nIt counts {glue:text}`n:,` things."),
        code("glue('n', 1234567, display=False)", [glued("n", 1234567), glued("share", 0.25)]),
        md("(sec-x)=\n## First part\n\nSee {doc}`02_dense` and {cite}`brown2020language`.\n### Detail\n\nMore."),
        code("plot()", [nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo="})],
             tags=["hide-input"]),
        md("## What to take away\n\n- One thing, {glue:text}`share:.0%`.\n\n## Exercises\n\n1. Why?\n2. How?\n\n"
           ":::{admonition} Answers\n:class: dropdown\n\n1. Because.\n:::"),
    ])


def test_toc_lists_every_chapter_in_order():
    files = booktools.toc_files()
    assert files[0] == "book/intro" and files[-1] == "book/bibliography"
    assert files.index("book/01_counting") < files.index("book/02_dense") < files.index("book/instructors")
    assert {"book/api", "book/glossary", "book/instructors"} <= set(files)


def test_glue_is_pasted_as_myst_nb_formats_it():
    values = booktools.glue_values(chapter())
    assert values == {"n": "1234567", "share": "0.25"}
    assert booktools.paste_glue("{glue:text}`n:,` and {glue:text}`share:.0%` and {glue}`n`", values) == \
        "1,234,567 and 25% and 1234567"
    with pytest.raises(KeyError):
        booktools.paste_glue("{glue:text}`nope`", values)
    assert booktools.paste_glue("{glue:text}`nope`", values, missing=lambda k: "?") == "?"


def test_section_splits_cells_at_level_two_headings():
    nb = chapter()
    take = booktools.section(nb, "What to take away")
    assert [c.source for c in take] == ["- One thing, {glue:text}`share:.0%`."]
    ex = booktools.section(nb, "exercises")
    assert ex[0].source.startswith("1. Why?") and ex[0].source.endswith(":::")
    assert bookext._exercise_count(ex) == 2  # the numbered answers inside the admonition are not exercises
    assert booktools.section(nb, "No such section") == []


def test_run_seconds_sums_the_recorded_cell_times():
    nb = chapter()
    assert booktools.run_seconds(nb) is None
    nb.cells[1].metadata["execution"] = {"iopub.execute_input": "2026-01-01T10:00:00.000000Z",
                                         "shell.execute_reply": "2026-01-01T10:00:02.500000Z"}
    nb.cells[3].metadata["execution"] = {"iopub.execute_input": "2026-01-01T10:00:03Z",
                                         "shell.execute_reply": "2026-01-01T10:00:04Z"}
    assert booktools.run_seconds(nb) == pytest.approx(3.5)
    assert booktools.figures(nb) == 1


def test_offline_guard_finds_loads_from_other_hosts_but_not_links(tmp_path):
    (tmp_path / "page.html").write_text(
        '<html><head><script src="https://cdn.example.org/mathjax.js"></script>'
        '<link rel="stylesheet" href="//fonts.example.org/css"><link rel="canonical" href="https://x.org/">'
        '<script src="_static/local.js"></script></head><body><a href="https://arxiv.org/abs/1">paper</a>'
        '<img src="_images/a.png"><div style="background: url(https://x.org/bg.png)"></div></body></html>')
    (tmp_path / "style.css").write_text("@import url('https://fonts.example.org/x.css'); a {background: url(a.png)}")
    found = bookext.external_loads(tmp_path)
    assert len(found) == 4, found
    assert any("cdn.example.org" in f for f in found) and any("fonts.example.org/css" in f for f in found)
    assert not any("arxiv" in f or "canonical" in f or "x.org/\"" in f for f in found)


def test_myst_becomes_plain_markdown_for_slides():
    myst = slides.Myst({"n": "1234567"}, {"02_dense": "Dense"}, {"sec-x": ("03_moe", "The router")},
                       {"brown2020language": ("Brown et al.", "2020")})
    out = myst("{glue:text}`n:,` {doc}`02_dense` {ref}`sec-x` {cite}`brown2020language` {cite:t}`brown2020language`"
               " {math}`x^2`\n(sec-y)=\n:::{admonition} Answer\n:class: dropdown\n\nYes.\n:::\n:::{note}\nHm.\n:::")
    assert "1,234,567" in out and '<a href="02_dense.slides.html">Dense</a>' in out
    assert '<a href="03_moe.slides.html">The router</a>' in out
    assert "(Brown et al., 2020)" in out and "Brown et al. (2020)" in out and "$x^2$" in out
    assert "<details><summary>Answer</summary>" in out and "</details>" in out and "**Note.**" in out
    assert "(sec-y)=" not in out and "{" not in out.replace("{glue", "")
    # a chapter's raw link to the calculator leads, from a deck, to the built site's page; {doc} stays a deck
    out = myst('<a href="calculator.html?model=mixtral-8x7b&experts=16">16 experts</a> and {doc}`02_dense`')
    assert '<a href="../html/book/calculator.html?model=mixtral-8x7b&experts=16">' in out
    assert '<a href="02_dense.slides.html">' in out


def test_every_reference_is_cited_and_every_citation_is_a_reference():
    """book/references.bib holds what the pages cite: every {cite} key has an entry, and every entry is cited
    from some page (a chapter's markdown, or markdown one of its cells displays)."""
    import json
    import re

    keys = set(re.findall(r"^@\w+\{([^,\s]+),", (ROOT / "book" / "references.bib").read_text(encoding="utf-8"), re.M))
    texts = [p.read_text(encoding="utf-8") for p in (ROOT / "book").glob("*.md")]
    for path in (ROOT / "book").glob("*.ipynb"):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            texts.append("".join(cell["source"]) if cell["cell_type"] == "markdown" else "")
            for out in cell.get("outputs", []):
                texts.append("".join(out.get("data", {}).get("text/markdown", "")))
    cited = {key.strip() for text in texts for keys_ in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", text)
             for key in keys_.split(",")}
    assert cited <= keys, f"cited without an entry: {sorted(cited - keys)}"
    assert keys <= cited, f"entries no page cites: {sorted(keys - cited)}"
