"""The slide decks of ``make slides`` in headless Chromium, opened from disk as a lecturer would, at 1280x720.

For every slide of every deck: nothing is taller or wider than the slide, every figure has loaded and is shown
large enough to read, and the slide has speaker notes. For every deck: reveal.js starts, the math is typeset by
the local MathJax without errors, no console error is logged, nothing is requested from another host, and the
deck printed to PDF (the handout of ``make handout``, printed here by this browser) has one page per slide.
Each deck's tallest slide goes to ``_build/screenshots/slides_fit.json`` (height over the slide's height).
Skipped when ``_build/slides`` is absent (``make slides``), unless ``WHATRUNS_REQUIRE_BROWSER=1``.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

import pytest

from test_site import CHROMIUM_ARGS, CHROMIUM, PAGE_TIMEOUT_MS, ROOT, SHOTS, _skip_or_fail, booktools

sys.path.insert(0, str(ROOT / "scripts"))
import handout  # noqa: E402

SLIDES = pathlib.Path(os.environ.get("WHATRUNS_SLIDES", ROOT / "_build" / "slides")).resolve()
WIDTH, HEIGHT = 1280, 720
MIN_FIGURE_HEIGHT = 300  # px of the 720: a figure squeezed below this is not readable from the back of a room
FIT = SHOTS / "slides_fit.json"


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


CHAPTERS = [p.stem for p in booktools.chapters(ROOT)]

MEASURE = """async () => {
    const out = [];
    const slides = Reveal.getSlides();
    for (let i = 0; i < slides.length; i++) {
        const at = Reveal.getIndices(slides[i]);
        Reveal.slide(at.h, at.v);
        await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
        const box = slides[i].querySelector('.slide');
        const imgs = [...slides[i].querySelectorAll('img')];
        await Promise.all(imgs.map(im => im.decode().catch(() => null)));
        // the height the content would take if the slide could grow (figures excluded: they fill what is left)
        let natural = null;
        if (!imgs.length) {
            box.style.height = 'auto';
            natural = box.scrollHeight;
            box.style.height = '';
        }
        out.push({
            n: i + 1, natural,
            title: (box.querySelector('h1, h2') || {}).textContent || '',
            height: box.scrollHeight, width: box.scrollWidth,
            images: imgs.map(im => ({src: im.getAttribute('src'), natural: im.naturalWidth * im.naturalHeight,
                                     shown: im.offsetHeight})),
            notes: (slides[i].querySelector('aside.notes') || {}).textContent || '',
        });
    }
    return out;
}"""


def _record_fit(chapter: str, worst: dict):
    SHOTS.mkdir(parents=True, exist_ok=True)
    data = json.loads(FIT.read_text()) if FIT.exists() else {}
    data[chapter] = worst
    FIT.write_text(json.dumps(data, indent=1, sort_keys=True))


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_deck(browser, chapter):
    deck = SLIDES / f"{chapter}.slides.html"
    assert deck.exists(), f"{deck.name} missing: run `make slides`"
    tab = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
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
    tab.wait_for_function("() => window.Reveal && Reveal.isReady() && document.body.dataset.mathDone")
    n = tab.evaluate("() => Reveal.getTotalSlides()")
    assert n == int(tab.evaluate("() => document.body.dataset.slides")) and n >= 3, f"{chapter}: {n} slides"

    # Math: every \( \) and \[ \] on the slides has become MathJax output, without errors.
    assert tab.locator("mjx-merror").count() == 0, f"{chapter}: MathJax reports a TeX error"
    left = tab.evaluate("""() => [...document.querySelectorAll('.slides .slide')]
        .filter(s => /\\\\\\(|\\\\\\[/.test(s.textContent)).map(s => s.textContent.slice(0, 80))""")
    assert not left, f"{chapter}: math left untypeset: {left}"

    slides = tab.evaluate(MEASURE)
    assert len(slides) == n
    worst = max(slides, key=lambda s: (s["height"], s["natural"] or 0))
    fullest = max((s for s in slides if s["natural"]), key=lambda s: s["natural"], default=None)
    _record_fit(chapter, {"slide": worst["n"], "title": worst["title"].strip(),
                          "height_ratio": round(worst["height"] / HEIGHT, 3),
                          "fullest_text_slide": fullest and {"slide": fullest["n"], "title": fullest["title"].strip(),
                                                             "height_ratio": round(fullest["natural"] / HEIGHT, 3)},
                          "widest_ratio": round(max(s["width"] for s in slides) / WIDTH, 3), "slides": n})
    too_tall = [f"{s['n']} {s['title'].strip()!r}: {s['height'] / HEIGHT:.2f}x" for s in slides if s["height"] > HEIGHT]
    too_wide = [f"{s['n']} {s['title'].strip()!r}: {s['width'] / WIDTH:.2f}x" for s in slides if s["width"] > WIDTH]
    assert not too_tall, f"{chapter}: slides taller than the screen: {too_tall}"
    assert not too_wide, f"{chapter}: slides wider than the screen: {too_wide}"
    no_notes = [s["n"] for s in slides if not s["notes"].strip()]
    assert not no_notes, f"{chapter}: slides without speaker notes: {no_notes}"
    images = [im for s in slides for im in s["images"]]
    assert all(im["natural"] > 0 for im in images), f"{chapter}: figures that did not load: {images}"
    small = [f"{s['n']}: {im['src']} {im['shown']}px" for s in slides for im in s["images"]
             if im["shown"] < MIN_FIGURE_HEIGHT]
    assert not small, f"{chapter}: figures shown too small to read: {small}"
    for im in images:
        assert (SLIDES / im["src"]).exists()
    if chapter in ("02_dense", "03_moe"):
        SHOTS.mkdir(parents=True, exist_ok=True)
        tab.evaluate("() => Reveal.slide(0)")
        tab.screenshot(path=str(SHOTS / f"slides_{chapter}.png"))
        shown = next((s for s in slides if s["images"]), None)
        if shown:
            tab.evaluate(f"() => {{ const at = Reveal.getIndices(Reveal.getSlides()[{shown['n'] - 1}]);"
                         f" Reveal.slide(at.h, at.v); }}")
            tab.wait_for_timeout(200)
            tab.screenshot(path=str(SHOTS / f"slides_{chapter}_figure.png"))
    tab.wait_for_timeout(100)
    assert not external, f"{chapter}: requests to another host: {external}"
    assert not errors, f"{chapter}: console errors: {errors}"


def test_every_chapter_has_a_deck():
    if not (SLIDES / "index.html").exists():
        _skip_or_fail(f"no slides at {SLIDES} (run `make slides`)")
    index = (SLIDES / "index.html").read_text(encoding="utf-8")
    for chapter in CHAPTERS:
        assert (SLIDES / f"{chapter}.slides.html").exists(), f"no deck for {chapter}"
        assert f'href="{chapter}.slides.html"' in index


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_handout_has_a_page_per_slide(browser, chapter, tmp_path):
    """The deck printed to PDF in this browser, as ``make handout`` prints it: one page per slide."""
    slides, pages = handout.print_deck(browser, SLIDES / f"{chapter}.slides.html", tmp_path / f"{chapter}.pdf")
    assert pages == slides, f"{chapter}: {pages} PDF pages for {slides} slides"


def test_calculator_links_point_at_the_site():
    """Slides that link to the calculator point at the built site's page (``_build/html``), with a preset."""
    if not (SLIDES / "index.html").exists():
        _skip_or_fail(f"no slides at {SLIDES} (run `make slides`)")
    import re

    links = [(deck.name, href) for deck in SLIDES.glob("*.slides.html")
             for href in re.findall(r'href="([^"]*calculator\.html[^"]*)"', deck.read_text(encoding="utf-8"))]
    assert links, "no slide links to the calculator"
    for name, href in links:
        assert href.startswith("../html/book/calculator.html?"), (name, href)
        site = SLIDES.parent / "html" / "book" / "calculator.html"
        if site.parent.exists():
            assert site.exists(), f"{name}: {href}: no calculator page in the built site"
