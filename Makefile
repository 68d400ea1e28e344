# `make demo` and `make test` set everything up on a fresh machine: they create .venv here.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench fuzz fuzz-coverage docs clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps -c constraints.txt recurrentgemma keras-hub  # why: constraints.txt
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) -m benchmarks
	$(PY) -m benchmarks.files
	$(PY) -m benchmarks.store $(if $(HUGE),--huge)  # make bench HUGE=1: the store from 10^4 to 10^7 streams too
	$(PY) -m benchmarks.onnx_adapter
	$(PY) -m benchmarks.sessions
	$(PY) -m benchmarks.plots

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

fuzz: $(STAMP)
	$(PY) -m fuzz

fuzz-coverage: $(STAMP)
	$(PY) -m fuzz.coverage -max_total_time=300 -timeout=10 -print_final_stats=1

clean:
	rm -rf $(VENV) build *.egg-info
