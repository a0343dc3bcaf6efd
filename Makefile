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

# Two worker processes (pytest-xdist): CI has 2 cores.
test: lint
	$(PY) -m pytest -n 2

train: $(INSTALLED)
	$(PY) -m train --config configs/default.py --workdir runs/default

# Benchmarks (BENCHMARKS.md sections 1–4, 6 and 7; PyTorch comes from the `bench` extra) and the
# small-scale reproduction of Goyal et al. Table 1 (section 5, about 15 minutes on 2 cores).
BENCH_INSTALLED := $(VENV)/.bench-installed

.PHONY: bench reproduce reproduce-fashion warmup-sharpness

$(BENCH_INSTALLED): pyproject.toml $(INSTALLED)
	$(PY) -m pip install --quiet -e '.[test,prepare,bench]'
	touch $@

bench: $(BENCH_INSTALLED)
	$(PY) -m bench.run_all

reproduce: $(INSTALLED)
	$(PY) -m bench.reproduce

# Goyal et al. on Fashion-MNIST (section 8): Table 1, Figure 1's batch-size frontier with LARS
# past it, and the gradient noise scale's prediction; about 40 minutes on 2 cores. A target of
# its own, so that `make reproduce` stays 8 minutes with nothing to install. It needs the
# dataset: `apt-get install dataset-fashion-mnist` (offline), or network access for TFDS.
reproduce-fashion: $(INSTALLED)
	$(PY) -m bench.reproduce_fashion

# Why warmup works (section 9): the loss's sharpness λ_max and η·λ_max against the optimizer's
# stability threshold over the first epochs of no, constant and gradual warmup; ≈ 15 minutes.
warmup-sharpness: $(INSTALLED)
	$(PY) -m bench.warmup_sharpness
