# `make test` and `make train` set everything up on a fresh machine: they create
# .venv if missing and re-install whenever pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: test lint train

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,prepare]'
	touch $@

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest

train: $(INSTALLED)
	$(PY) -m recipe.train --config recipe/configs/default.py --workdir runs/default

# Benchmarks (BENCHMARKS.md sections 1–4 and 6; PyTorch comes from the `bench` extra) and the
# small-scale reproduction of Goyal et al. Table 1 (section 5, about 15 minutes on 2 cores).
BENCH_INSTALLED := $(VENV)/.bench-installed

.PHONY: bench reproduce

$(BENCH_INSTALLED): pyproject.toml $(INSTALLED)
	$(PY) -m pip install --quiet -e '.[test,prepare,bench]'
	touch $@

bench: $(BENCH_INSTALLED)
	$(PY) -m bench.run_all

reproduce: $(INSTALLED)
	$(PY) -m bench.reproduce
