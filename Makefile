# `make test` and `make train` set everything up on a fresh machine: they create
# .venv if missing and re-install whenever pyproject.toml changes. .venv has the trainer's
# extra (`train`: the input pipeline, TensorBoard, matplotlib, tqdm), the test tools and
# TensorFlow for preparing TFDS datasets (`prepare`).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: test lint train

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,test,prepare]'
	touch $@

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Two worker processes (pytest-xdist): CI has 2 cores. Work stealing: a worker that runs out of
# tests takes some of the other's (tests/conftest.py orders them for it). The 25 slowest tests
# are listed at the end, so that the suite's time budget stays in sight.
PYTEST_ARGS := -n 2 --dist worksteal --durations=25

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

# The same suite on the newest Python here, with the newest releases pip resolves for it, in a
# venv of its own: JAX 0.11 dropped Python 3.11, so .venv stays on jax 0.10 while a user on
# Python 3.12+ (Colab, any fresh machine) gets the newest jax and flax from the same install.
# pyenv's python3.13 shim answers only where 3.13 is selected: the interpreter is found in
# pyenv's versions directly (or set NEWEST_PYTHON=...).
NEWEST_PYTHON ?= $(firstword $(wildcard $(shell pyenv root 2>/dev/null)/versions/3.13*/bin/python3.13 $(HOME)/.pyenv/versions/3.13*/bin/python3.13) python3.13)
NEWEST := .venv-newest
NEWEST_INSTALLED := $(NEWEST)/.installed

.PHONY: test-newest

$(NEWEST_INSTALLED): pyproject.toml
	test -x $(NEWEST)/bin/python || $(NEWEST_PYTHON) -m venv $(NEWEST)
	$(NEWEST)/bin/python -m pip install --quiet --upgrade pip
	$(NEWEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[train,test,prepare]'
	touch $@

test-newest: $(NEWEST_INSTALLED)
	$(NEWEST)/bin/python -m pytest $(PYTEST_ARGS)

# The core install alone (`pip install large-batch-recipe`, no extra) in a fresh venv of its
# own, rebuilt every time: `import recipe` imports none of the extras' packages, `recipe.data`
# and the trainer refuse in one line naming their extra, and every example of
# docs/flax_project.md runs (tests/core_install.py, run from outside the checkout).
CORE := .venv-core

.PHONY: test-core

test-core:
	rm -rf $(CORE)
	$(PYTHON) -m venv $(CORE)
	$(CORE)/bin/python -m pip install --quiet --upgrade pip
	$(CORE)/bin/python -m pip install --quiet .
	cd $(CORE) && bin/python $(CURDIR)/tests/core_install.py

train: $(INSTALLED)
	$(PY) -m train --config configs/default.py --workdir runs/default

# Benchmarks (BENCHMARKS.md sections 1–4, 6 and 7; PyTorch comes from the `bench` extra) and the
# small-scale reproduction of Goyal et al. Table 1 (section 5, about 15 minutes on 2 cores).
BENCH_INSTALLED := $(VENV)/.bench-installed

.PHONY: bench reproduce reproduce-fashion warmup-reasons

$(BENCH_INSTALLED): pyproject.toml $(INSTALLED)
	$(PY) -m pip install --quiet -e '.[train,test,prepare,bench]'
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


# The documentation site (docs/, the `docs` extra): built offline, every warning an error, into
# docs/_build/html.
DOCS_INSTALLED := $(VENV)/.docs-installed

.PHONY: docs

$(DOCS_INSTALLED): pyproject.toml $(INSTALLED)
	$(PY) -m pip install --quiet -e '.[train,test,prepare,docs]'
	touch $@

docs: $(DOCS_INSTALLED)
	$(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

# BENCHMARKS.md section 9 on a GPU machine (bench/device.py, at most 8 minutes). Its Python has
# jax with CUDA and torch; what it lacks (bench/device.py WHEELS) travels as wheels in .whl/:
# `make device-wheels` where there is network, then bring .whl/ with the working tree.
# `make bench-device` installs them into /tmp/device-site (no network) and runs the benchmark.
DEVICE_PYTHON ?= python3
DEVICE_SITE := /tmp/device-site

.PHONY: bench-device device-wheels

device-wheels:
	$(PYTHON) -m bench.device wheels .whl

bench-device:
	if ls .whl/*.whl >/dev/null 2>&1; then $(DEVICE_PYTHON) -m pip install --quiet --no-index \
		--no-deps --upgrade --target $(DEVICE_SITE) .whl/*.whl; fi
	PYTHONPATH=$(DEVICE_SITE)$${PYTHONPATH:+:$$PYTHONPATH} $(DEVICE_PYTHON) -m bench.device

# What the library costs a Flax project (section 11): packages of the core install and the
# extras (pip's dry run into an empty venv), and `import recipe`'s time; about 2 minutes.
.PHONY: footprint

footprint: $(INSTALLED)
	$(PY) -m bench.install_footprint

# Why warmup works (section 10): the relative update size, the gradient noise scale and the
# sharpness along no, constant and gradual warmup over 3 seeds; test error over target rate ×
# warmup length; warmup started at the measured stability edge. 36 runs, ≈ 35 minutes on 2 cores.
warmup-reasons: $(INSTALLED)
	$(PY) -m bench.warmup_reasons
