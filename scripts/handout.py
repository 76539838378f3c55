"""``make handout``: every deck of ``make slides`` as a PDF, one slide per page, in ``_build/slides/handout/``.

    python scripts/handout.py                   # every deck in _build/slides
    python scripts/handout.py 03_moe            # some

Each deck is opened from disk in headless Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright, as the
browser tests do) in reveal.js's print view (``?print-pdf``) and printed to PDF at the slide's own size. A slide
taller than its page would spill onto a second page, so the script checks that every PDF has exactly as many
pages as its deck has slides, and fails otherwise. tests/browser/test_slides.py runs the same check.
"""

from __future__ import annotations

import os
import pathlib
import re
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
SLIDES = pathlib.Path(os.environ.get("WHATRUNS_SLIDES", ROOT / "_build" / "slides")).resolve()
CHROMIUM = os.environ.get("WHATRUNS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--disable-extensions", "--no-default-browser-check"]
TIMEOUT_MS = 60_000


def pdf_pages(data: bytes) -> int:
    """Pages of a PDF as Chromium writes it (each page object is ``/Type /Page``, uncompressed)."""
    return len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", data))


def print_deck(browser, deck: pathlib.Path, pdf: pathlib.Path) -> tuple[int, int]:
    """Print one deck to ``pdf``; returns (slides in the deck, pages in the PDF). Fails on any request that
    would leave the machine."""
    tab = browser.new_page(viewport={"width": 1280, "height": 720})
    tab.set_default_timeout(TIMEOUT_MS)
    external = []
    tab.route("**/*", lambda r: r.continue_() if r.request.url.startswith(("file:", "data:"))
              else (external.append(r.request.url), r.abort()))
    # reveal.js lays the slides out for print after it is ready, then announces it with a 'pdf-ready' event
    tab.add_init_script("document.addEventListener('pdf-ready', () => { window.whatrunsPdfReady = true; });")
    try:
        tab.goto(deck.as_uri() + "?print-pdf", wait_until="load")
        tab.wait_for_function("() => window.whatrunsPdfReady && document.body.dataset.mathDone")
        tab.evaluate("""async () => {
            await Promise.all([...document.images].map(i => i.decode().catch(() => null)));
            await document.fonts.ready;
        }""")
        slides = int(tab.evaluate("() => document.body.dataset.slides"))  # as scripts/slides.py wrote the deck
        pdf.parent.mkdir(parents=True, exist_ok=True)
        data = tab.pdf(prefer_css_page_size=True, print_background=True)
    finally:
        tab.close()
    if external:
        raise RuntimeError(f"{deck.name}: requests to another host: {external}")
    pdf.write_bytes(data)
    return slides, pdf_pages(data)


def main(argv: list[str]) -> int:
    if not pathlib.Path(CHROMIUM).exists():
        print(f"handout: no Chromium at {CHROMIUM} (apt-get install chromium)", file=sys.stderr)
        return 1
    decks = ([SLIDES / f"{name}.slides.html" for name in argv] if argv
             else sorted(SLIDES.glob("*.slides.html")))
    missing = [d.name for d in decks if not d.exists()]
    if not decks or missing:
        print(f"handout: no decks {missing or ''} in {SLIDES} (run `make slides`)", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    start, bad = time.perf_counter(), []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            for deck in decks:
                pdf = SLIDES / "handout" / deck.name.replace(".slides.html", ".pdf")
                slides, pages = print_deck(browser, deck, pdf)
                print(f"{pdf.relative_to(SLIDES)}: {pages} pages for {slides} slides, "
                      f"{pdf.stat().st_size / 1e6:.1f} MB")
                if pages != slides:
                    bad.append(f"{pdf.name}: {pages} pages for {slides} slides (a slide is taller than its page)")
        finally:
            browser.close()
    sys.path.insert(0, str(ROOT / "scripts"))
    import booktools
    import slides as slides_mod

    slides_mod.write_index(booktools.chapters(), {p.stem: booktools.title(booktools.read(p))
                                                  for p in booktools.chapters()})
    if bad:
        print("handout:\n  " + "\n  ".join(bad), file=sys.stderr)
        return 1
    print(f"{len(decks)} handouts in {SLIDES / 'handout'} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
