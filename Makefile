# pyro_nfvi: `make demo` and `make test` work on a fresh machine with no other step.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is pinned: 2.13.0 is a CPU wheel on disk; an unpinned torch pulls gigabytes of CUDA.
TORCH := torch==2.13.0

.PHONY: demo test install clean bench docs

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test,docs]" $(TORCH)
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m pyro_nfvi.cli demo

# The test suite includes the documentation build (tests/test_docs.py runs the same sphinx-build).
test: install
	$(PY) -m pytest -q

# The site, in docs/_build/html: warnings are errors, every cross-reference must resolve (through
# the inventories shipped in docs/inventories: no network), and the tutorials are executed.
docs: install
	$(PY) -m sphinx -W --keep-going -n -b html docs docs/_build/html

bench: install
	$(PY) benchmarks/svi_step.py

clean:
	rm -rf $(VENV) build *.egg-info docs/_build
