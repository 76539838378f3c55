# The two commands a reader needs: `make book` and `make test`. Each creates .venv when it is missing.
PY      := .venv/bin/python
STAMP   := .venv/.installed

.PHONY: book slides handout test test-lib test-notebooks test-site check execute experiments bench clean

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

# The library's tests; every notebook under nbval (strict: the stored outputs are the claims), in place with this
# CPU's kernels, then each one alone (copied into an empty folder, the package installed from a wheel) with
# torch's generic kernels, ATEN_CPU_CAPABILITY=default, and, where the CPU has AVX-512, with avx2 too
# (tests/notebooks); then the site built and checked in headless Chromium (tests/browser; skipped where
# /usr/bin/chromium is missing, unless WHATRUNS_REQUIRE_BROWSER=1 as in CI).
test: test-lib test-notebooks test-site

test-lib: $(STAMP)
	$(PY) -m pytest tests --ignore=tests/browser --ignore=tests/notebooks

test-notebooks: $(STAMP)
	$(PY) -m pytest --nbval --nbval-current-env book/
	$(PY) -m pytest tests/notebooks

test-site: book slides
	$(PY) -m pytest tests/browser

# One chapter as `make test` checks it, before committing it: nbval in place, then alone with generic kernels
# (and avx2 where the CPU has more). make check NB=book/06_like_with_like.ipynb
check: $(STAMP)
	@test -n "$(NB)" || { echo "usage: make check NB=book/X.ipynb"; exit 2; }
	$(PY) -m pytest --nbval --nbval-current-env $(NB)
	$(PY) -m pytest tests/notebooks -k "$(basename $(notdir $(NB)))"

# Re-execute notebooks in place (all, or NB=book/02_dense.ipynb), storing their outputs; then `make test`.
execute: $(STAMP)
	$(PY) scripts/execute.py $(NB)

# The experiment chapters' full sweeps (minutes to an hour on 2 cores): writes src/whatruns/data/*.json
# (package data, whatruns.data), which the chapters read and re-check live. Interrupted sweeps resume from build/experiments/.
experiments: $(STAMP)
	$(PY) scripts/experiments.py

# The MoE speed benchmark (chapter "What FLOPs don't count"): ratios measured side by side, minutes on
# 2 cores, once with torch's default threads and once with 1; with the default threads also the library's
# default strategy against transformers' Mixtral (eager and grouped_mm) and the dense twin, with issue 13's
# targets. Not part of `make test`.
bench: $(STAMP)
	$(PY) benchmarks/moe_speed.py --threads 0 1

clean:
	rm -rf _build
