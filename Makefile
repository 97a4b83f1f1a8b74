# Contexis runtime. `make serve` and `make test` each build .venv from setup.cfg when it is missing.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ADDR ?= :8000
PROJECT ?= examples/quickstart

.PHONY: install serve test lint bench bench-tools bench-profile

include deploy/helm.mk

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade 'pip>=25'
	$(BIN)/python -m pip install --quiet --editable '.[dev]'
	touch $@

install: $(STAMP)

serve: install
	$(BIN)/ctx serve --addr $(ADDR) --root $(PROJECT)

lint: install
	$(BIN)/ruff check .

test: lint $(HELM)
	HELM=$(abspath $(HELM)) $(BIN)/python -m pytest

# Benchmarks (docs/benchmarks.md): not part of `make test`. Installs the bench extra, and wrk and
# nginx from Debian when missing.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --editable '.[dev,bench]'
	touch $@

bench-tools: $(BENCH_STAMP)
	@command -v wrk >/dev/null && command -v nginx >/dev/null || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx >/dev/null; }

bench: bench-tools
	$(BIN)/python bench/run.py

bench-profile: bench-tools
	$(BIN)/python bench/profile.py
