# Contexis runtime. `make serve` and `make test` each build .venv from setup.cfg when it is missing.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ADDR ?= :8000
PROJECT ?= examples/quickstart

.PHONY: install serve test lint

include deploy/helm.mk

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade 'pip>=25'
	$(BIN)/python -m pip install --quiet --editable '.[dev]'
	touch $@

install: $(STAMP)

serve: install
	$(BIN)/ctx memory ingest --root $(PROJECT) --component CustomerDocs $(PROJECT)/docs/CustomerDocs
	$(BIN)/ctx serve --addr $(ADDR) --root $(PROJECT)

lint: install
	$(BIN)/ruff check .

test: lint $(HELM)
	HELM=$(abspath $(HELM)) $(BIN)/python -m pytest
