"""The slide decks of ``make slides`` in headless Chromium, opened from disk as a lecturer would.

Each chapter's deck starts reveal.js, has a slide per section, typesets its math with the local MathJax,
shows its figures, carries the chapter's takeaways as speaker notes, logs no console error, and requests
nothing from another host. Skipped when ``_build/slides`` is absent (``make slides``), unless
``WHATRUNS_REQUIRE_BROWSER=1``.
"""

from __future__ import annotations

import os
import pathlib

import pytest

from test_site import CHROMIUM_ARGS, CHROMIUM, PAGE_TIMEOUT_MS, ROOT, SHOTS, _skip_or_fail, booktools

SLIDES = pathlib.Path(os.environ.get("WHATRUNS_SLIDES", ROOT / "_build" / "slides")).resolve()


@pytest.fixture(scope="module")
def browser():
    if not (SLIDES / "index.html").exists():
        _skip_or_fail(f"no slides at {SLIDES} (run `make slides`)")
    if not pathlib.Path(CHROMIUM).exists():
        _skip_or_fail(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.mark.parametrize("chapter", [p.stem for p in booktools.chapters(ROOT)])
def test_deck(browser, chapter):
    deck = SLIDES / f"{chapter}.slides.html"
    assert deck.exists(), f"{deck.name} missing: run `make slides`"
    tab = browser.new_page(viewport={"width": 1280, "height": 800})
    tab.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        _check_deck(tab, chapter, deck)
    finally:
        tab.close()


def _check_deck(tab, chapter, deck):
    external, errors = [], []
    tab.route("**/*", lambda r: r.continue_() if r.request.url.startswith(("file:", "data:"))
              else (external.append(r.request.url), r.abort()))
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.goto(deck.as_uri(), wait_until="load")
    tab.wait_for_function("() => window.Reveal && Reveal.isReady()")
    nb = booktools.read(ROOT / "book" / f"{chapter}.ipynb")
    sections = sum(line.startswith("## ") for c in nb.cells if c.cell_type == "markdown"
                   for line in c.source.splitlines())
    assert tab.evaluate("() => Reveal.getTotalSlides()") >= sections + 1

    has_math = tab.evaluate("() => /\\$|\\\\\\(/.test(document.querySelector('.slides').textContent)")
    if has_math:
        tab.wait_for_function("() => document.querySelectorAll('mjx-container').length > 0")
        assert tab.locator("mjx-merror").count() == 0
    sizes = tab.evaluate("""async () => {
        const imgs = [...document.querySelectorAll('.slides img')];
        await Promise.all(imgs.map(i => i.decode().catch(() => null)));
        return imgs.map(i => i.naturalWidth * i.naturalHeight);
    }""")
    assert len(sizes) >= booktools.figures(nb) and all(sizes), f"{chapter}: figures missing or empty"
    if booktools.section(nb, "What to take away"):
        notes = tab.evaluate("() => Reveal.getSlide(0).querySelector('aside.notes')?.textContent || ''")
        assert "What to take away" in notes, f"{chapter}: no speaker notes on the title slide"
    if chapter == "02_dense":
        SHOTS.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(SHOTS / f"slides_{chapter}.png"))
        if tab.evaluate("""() => { const img = document.querySelector('.slides img');
            if (!img) return false; const at = Reveal.getIndices(img.closest('section'));
            Reveal.slide(at.h, at.v); return true; }"""):
            tab.wait_for_timeout(300)
            tab.screenshot(path=str(SHOTS / f"slides_{chapter}_figure.png"))
    tab.wait_for_timeout(100)
    assert not external, f"{chapter}: requests to another host: {external}"
    assert not errors, f"{chapter}: console errors: {errors}"
