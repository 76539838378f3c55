"""The decks of `make slides` (scripts/slides.py) without a browser: outlines are read against the notebooks they
point into, every committed outline resolves against its committed chapter, and a chapter without an outline
still gets a deck. tests/browser/test_slides.py checks the built decks in Chromium."""

import copy
import pathlib
import sys

import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import booktools  # noqa: E402
import slides  # noqa: E402


def md(text, cell_id, **meta):
    cell = nbformat.v4.new_markdown_cell(text, metadata=meta)
    cell.id = cell_id
    return cell


def code(text, cell_id, outputs=(), **meta):
    cell = nbformat.v4.new_code_cell(text, metadata=meta)
    cell.outputs = list(outputs)
    cell.id = cell_id
    return cell


def glued(key, value):
    return nbformat.v4.new_output("display_data", data={"application/papermill.record/text/plain": repr(value)},
                                  metadata={"scrapbook": {"name": key, "mime_prefix": "application/papermill.record/"}})


def printed(text):
    return nbformat.v4.new_output("stream", name="stdout", text=text)


PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def chapter():
    return nbformat.v4.new_notebook(cells=[
        md("# A chapter\n\nIt counts {glue:text}`n:,` things.", "c0"),
        code("glue('n', 1234567, display=False)", "c1", [glued("n", 1234567), glued("share", 0.25),
                                                         printed("row  value\na    1\nb    2\n")]),
        md("(sec-x)=\n## First part\n\nSee {doc}`02_dense`, and\n\n$$N = 12LD^2$$\n\n| a | b |\n|--|--:|\n"
           "| x | 1 |\n| y | 2 |\n### Detail\n\nMore.", "c2"),
        code("plot()", "c3", [nbformat.v4.new_output("display_data", data={"image/png": PNG})], tags=["hide-input"]),
        code("secret()", "c4", [printed("hidden\n")]),
        md("## What to take away\n\n- One thing, {glue:text}`share:.0%`. And more about it.\n- Another.\n\n"
           "## Exercises\n\n1. Why?\n2. How\n   exactly?\n\n"
           ":::{admonition} Answers\n:class: dropdown\n\n1. Because.\n2. Like so.\n:::", "c5"),
    ])


def build(nb, outline):
    ch = slides.Chapter(pathlib.Path("book/x.ipynb"), nb, {"02_dense": "Dense"}, {}, {})
    return ch, slides.deck(ch, outline)


OUTLINE = {"subtitle": "Counts {glue:text}`n:,`.", "slides": [
    {"title": "Values", "claim": "Share {glue:text}`share:.0%`.", "values": [{"glue": "n:,", "label": "things"}],
     "notes": "sec-x"},
    {"title": "A figure", "figure": "c3", "notes": "First part", "say": "Point at the curve."},
    {"title": "A table", "table": {"cell": "c2", "rows": ["y"]}, "notes": "Detail"},
    {"title": "Printed", "text": {"cell": "c1", "lines": [1, 2]}, "notes": "sec-x"},
    {"title": "Formula", "math": {"cell": "c2", "n": 1}, "points": ["$k$ of $E$"], "notes": "sec-x",
     "link": {"calculator": "model=mixtral-8x7b&experts=16"}},
    {"title": "Exercise", "exercise": 2},
]}


def test_an_outline_becomes_slides_with_notes_and_glued_values():
    nb = chapter()
    before = nbformat.writes(nb)
    ch, deck = build(nb, OUTLINE)
    assert nbformat.writes(nb) == before  # the chapter itself is never changed
    assert not ch.errors, ch.errors
    assert [s.title for s in deck][:7] == ["A chapter", "Values", "A figure", "A table", "Printed", "Formula",
                                           "Exercise"]
    title, values, figure, table, text, formula, exercise = deck[:7]
    assert title.kind == "title" and "1,234,567" in title.claim and "One thing, 25%" in title.notes
    assert "1,234,567" in values.body and "things" in values.body and "25%" in values.claim
    assert '<img src="img/x-c3-1.png"' in figure.body and ch.images["img/x-c3-1.png"] == PNG
    assert figure.notes.startswith("<p>Point at the curve.</p>") and "First part" in figure.notes
    assert "<td>y</td>" in table.body and "<td>x</td>" not in table.body and 'class="right"' in table.body
    assert "row  value\na    1" in text.body and "b    2" not in text.body
    assert "\\[N = 12LD^2\\]" in formula.body and "\\(k\\)" in formula.points[0]
    assert 'href="../html/book/calculator.html?model=mixtral-8x7b&amp;experts=16"' in formula.link
    assert "How exactly?" in exercise.body and "Like so." in exercise.notes
    # notes keep TeX as text: the speaker view has no MathJax
    assert '<span class="tex">N = 12LD^2</span>' in values.notes
    # no code is shown unless an outline asks for it
    assert not any("secret()" in s.body or "plot()" in s.body for s in deck)
    takeaways = [s for s in deck if s.kind == "takeaways"]
    assert len(takeaways) == 1 and takeaways[0].points == ["One thing, 25%.", "Another."]
    assert "And more about it." in takeaways[0].notes  # the slide shows the first sentence, the notes all of it


def test_an_outline_that_points_at_nothing_names_every_miss():
    bad = copy.deepcopy(OUTLINE)
    bad["slides"] += [
        {"title": "Missing", "figure": "nope", "notes": "No such section"},
        {"title": "Glue", "claim": "{glue:text}`absent`", "table": {"cell": "c2", "rows": [9]}, "notes": "sec-x"},
        {"title": "Two bodies", "figure": "c3", "text": {"cell": "c1"}, "notes": "sec-x", "colour": "red"},
        {"title": "Quiet"},
    ]
    ch, _ = build(chapter(), bad)
    text = "\n".join(ch.errors)
    for expected in ["no cell with id 'nope'", "no section with the label or heading 'No such section'",
                     "glue key 'absent'", "not a row 9", "one of figure, text per slide", "unknown key(s) colour",
                     "no notes"]:
        assert expected in text, (expected, ch.errors)


def test_a_chapter_without_an_outline_gets_title_figures_and_takeaways():
    nb = chapter()
    nb.cells[4].metadata["tags"] = ["slide"]  # a code cell marked for the slides
    ch, deck = build(nb, None)
    assert not ch.errors
    kinds = [(s.kind, s.body_kind) for s in deck]
    assert kinds == [("title", ""), ("content", "figure"), ("content", "code"), ("takeaways", "")] or \
        kinds == [("title", ""), ("content", "code"), ("content", "figure"), ("takeaways", "")]
    assert all(s.notes.strip() for s in deck)
    assert any("secret()" in s.body for s in deck)


def test_sentences_and_exercises_are_read_as_the_chapters_write_them():
    assert slides._split_sentences("A costs $2.5$ e.g. here. Then $x. Y$ stays. Last.") == \
        ["A costs $2.5$ e.g. here.", "Then $x. Y$ stays.", "Last."]
    ex = slides.exercises("1. First?\n\n:::{admonition} Answer\n:class: dropdown\nYes.\n:::\n\n2. Second?\n")
    assert ex == {1: ("First?", "Yes."), 2: ("Second?", "")}


@pytest.mark.parametrize("path", booktools.chapters(), ids=lambda p: p.stem)
def test_every_committed_outline_resolves_against_its_chapter(path):
    """Each book/slides/<chapter>.yml points only at sections, cells and glued values the committed notebook holds
    (a chapter the toc gains without an outline gets the fallback deck, which must build too)."""
    nb = booktools.read(path)
    titles = {p.stem: booktools.title(booktools.read(p)) for p in booktools.chapters()}
    ch = slides.Chapter(path, nb, titles, {}, {})
    outline = slides.load_outline(path.stem)
    deck = slides.deck(ch, outline)
    assert not ch.errors, "\n".join(ch.errors)
    assert all(s.notes.strip() for s in deck)
    assert len(deck) >= (4 if outline is not None else 2)
