# The two commands a reader needs: `make book` and `make test`. Each creates .venv when it is missing.
PY      := .venv/bin/python
STAMP   := .venv/.installed

.PHONY: book slides handout test test-lib test-notebooks test-site execute experiments bench clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

# The site, from the stored (nbval-verified) notebook outputs; -W: any warning fails the build, and so does
# any page that would load something from another host (the site works offline). --all: every page is
# rewritten (an incremental build keeps links to sections that moved); under a minute on 2 cores.
book: $(STAMP) node_modules/.installed
	.venv/bin/jupyter-book build . -W -n --keep-going --all

# The calculator page runs the library in the browser under Pyodide, which the build copies from npm
# (package.json pins it, package-lock.json its bytes): about 14 MB under _build/html/_static/calculator/.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --ignore-scripts
	touch $@

# Every chapter as reveal.js slides that work offline, with speaker notes: _build/slides/index.html. What each
# slide shows comes from the chapter's outline, book/slides/<chapter>.yml.
slides: $(STAMP)
	$(PY) scripts/slides.py

# Every deck as a PDF, one slide per page, printed by headless Chromium: _build/slides/handout/.
handout: slides
	$(PY) scripts/handout.py

# The library's tests, every notebook under nbval, then the site built and checked in headless Chromium
# (tests/browser; skipped where /usr/bin/chromium is missing, unless WHATRUNS_REQUIRE_BROWSER=1 as in CI).
test: $(STAMP)
	$(PY) -m pytest tests --ignore=tests/browser
	@if ls book/*.ipynb >/dev/null 2>&1; then $(PY) -m pytest --nbval --nbval-current-env book/; fi
	$(MAKE) test-site

test-site: book slides
	$(PY) -m pytest tests/browser

# Re-execute notebooks in place (all, or NB=book/02_dense.ipynb), storing their outputs; then `make test`.
execute: $(STAMP)
	$(PY) scripts/execute.py $(NB)

# The experiment chapters' full sweeps (minutes to an hour on 2 cores): writes book/data/*.json,
# which the chapters read and re-check live. Interrupted sweeps resume from build/experiments/.
experiments: $(STAMP)
	$(PY) scripts/experiments.py

# The MoE speed benchmark (chapter "What FLOPs don't count"): ratios measured side by side, minutes on
# 2 cores, once with torch's default threads and once with 1. Not part of `make test`.
bench: $(STAMP)
	$(PY) benchmarks/moe_speed.py --threads 0 1

clean:
	rm -rf _build
