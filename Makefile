# The two commands a reader needs: `make book` and `make test`. Each creates .venv when it is missing.
PY      := .venv/bin/python
STAMP   := .venv/.installed

.PHONY: book test test-lib test-notebooks execute clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

# The site, from the stored (nbval-verified) notebook outputs; -W: any warning fails the build.
book: $(STAMP)
	.venv/bin/jupyter-book build . -W -n --keep-going

test: $(STAMP)
	$(PY) -m pytest tests
	@if ls book/*.ipynb >/dev/null 2>&1; then $(PY) -m pytest --nbval --nbval-current-env book/ -q; fi

# Re-execute notebooks in place (all, or NB=book/02_dense.ipynb), storing their outputs; then `make test`.
execute: $(STAMP)
	$(PY) scripts/execute.py $(NB)

clean:
	rm -rf _build
