# Zumik Secrets: build, check and run. GNU make; `make help` lists the targets.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules --no-print-directory

VENV ?= .venv
PY = $(VENV)/bin/python
NPM ?= npm
PYTEST_ARGS ?=

# The interpreter the venv is created from: PYTHON if given, else the first Python 3.11+ found.
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell for p in python3 python3.13 python3.12 python3.11; do \
	if command -v $$p >/dev/null 2>&1 && \
	   $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
	  echo $$p; break; fi; done)
endif

VENV_STAMP = $(VENV)/.zumik-dev.stamp
BENCH_STAMP = $(VENV)/.zumik-bench.stamp
NODE_STAMP = node_modules/.zumik.stamp
LINT_PATHS = $(wildcard service clients tests bench scripts)
MYPY_PATHS = service clients/python/src/zumik_secrets_client scripts
GENERATED = clients/python/src

.PHONY: help venv node_modules proto proto-check buf-lint buf-breaking client-check lint fmt \
	test run bench bench-quick clean distclean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

# ------------------------------------------------------------------------------ environment

# The client is installed editable (like the service) so `make proto` takes effect at once;
# `make client-check` installs it for real into a scratch venv to test the packaging.
$(VENV_STAMP): pyproject.toml clients/python/pyproject.toml
	@if [ -z "$(PYTHON)" ] || \
	   ! $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
	  echo "error: Python 3.11+ is required but PYTHON='$(PYTHON)' is missing or older;" \
	    "install python3.11+ or run with PYTHON=/path/to/python3.11" >&2; exit 1; fi
	@if [ ! -x $(PY) ]; then echo "venv: creating $(VENV) with $$($(PYTHON) --version)"; \
	  $(PYTHON) -m venv $(VENV); fi
	@$(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "error: $(VENV) runs Python < 3.11; remove it and rerun" >&2; exit 1; }
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e ./clients/python
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

venv: $(VENV_STAMP) ## Create/refresh the dev venv (VENV=.venv): client, service, dev tools

$(BENCH_STAMP): $(VENV_STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[bench]'
	@touch $@

# --ignore-scripts: @bufbuild/buf's postinstall only swaps its JS launcher for the native binary;
# `npx buf` works without it, and no package gets to run code at install time.
$(NODE_STAMP): package.json package-lock.json
	@command -v $(NPM) >/dev/null 2>&1 || \
	  { echo "error: npm is required for buf (e.g. apt-get install nodejs npm)" >&2; exit 1; }
	$(NPM) ci --ignore-scripts --no-audit --no-fund
	@touch $@

node_modules: $(NODE_STAMP) ## Install the pinned Node tools (buf) from package-lock.json

# ------------------------------------------------------------------------------ contracts

proto: $(VENV_STAMP) ## Regenerate clients/python/src/zumik/** from proto/ (deterministic)
	$(PY) scripts/gen_proto.py

proto-check: proto ## Fail if the committed generated code differs from a fresh `make proto`
	@git rev-parse --is-inside-work-tree >/dev/null 2>&1 || \
	  { echo "error: proto-check needs a git checkout" >&2; exit 1; }
	@git diff --exit-code --stat -- $(GENERATED) || \
	  { echo "error: generated code is stale: run 'make proto' and commit the result" >&2; exit 1; }
	@untracked="$$(git status --porcelain --untracked-files=all -- $(GENERATED))"; \
	if [ -n "$$untracked" ]; then echo "$$untracked"; \
	  echo "error: generated files not committed: run 'make proto' and commit them" >&2; exit 1; fi
	@echo "proto-check: generated code is up to date"

buf-lint: $(NODE_STAMP) ## buf lint (STANDARD + COMMENTS) and buf format check
	npx --no-install buf lint
	npx --no-install buf format --exit-code -d

BUF_AGAINST ?= .git\#branch=main
buf-breaking: $(NODE_STAMP) ## buf breaking (FILE) against BUF_AGAINST (default: branch main)
	npx --no-install buf breaking --against '$(BUF_AGAINST)'

client-check: $(VENV_STAMP) ## Install clients/python into a fresh scratch venv and import it
	PYTHON=$(PYTHON) DEV_PY=$(PY) scripts/client_check.sh

# ------------------------------------------------------------------------------ quality

lint: $(VENV_STAMP) $(NODE_STAMP) ## ruff check + format check, mypy --strict, buf lint
	@status=0; \
	echo "+ ruff check"; $(PY) -m ruff check $(LINT_PATHS) || status=1; \
	echo "+ ruff format --check"; $(PY) -m ruff format --check $(LINT_PATHS) || status=1; \
	echo "+ mypy --strict"; $(PY) -m mypy --strict $(MYPY_PATHS) || status=1; \
	echo "+ buf-lint"; $(MAKE) buf-lint || status=1; \
	exit $$status

fmt: $(VENV_STAMP) $(NODE_STAMP) ## Apply ruff format, ruff's safe fixes and buf format
	$(PY) -m ruff format $(LINT_PATHS)
	$(PY) -m ruff check --fix $(LINT_PATHS) || true
	npx --no-install buf format -w

test: $(VENV_STAMP) $(NODE_STAMP) ## proto-check, lint, then the whole pytest suite
	$(MAKE) proto-check
	$(MAKE) lint
	$(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

# ------------------------------------------------------------------------------ run

run: $(VENV_STAMP) ## Dev server: dev PKI + keyring in var/dev (made if missing), then serve
	$(PY) -m zumik_secrets.cli.main dev-setup
	ZUMIK_DEV=1 exec $(VENV)/bin/zumik-secrets serve

bench: $(BENCH_STAMP) ## Full benchmark run
	$(PY) -m bench

bench-quick: $(BENCH_STAMP) ## Short benchmark run
	$(PY) -m bench --quick

# ------------------------------------------------------------------------------ cleanup

clean: ## Remove build output and caches (keeps the venv, node_modules and var/)
	rm -rf build dist clients/python/build clients/python/dist .hypothesis
	find . -path ./$(VENV) -prune -o -path ./node_modules -prune -o -path ./.git -prune -o \
	  \( -name __pycache__ -o -name '*.egg-info' -o -name .mypy_cache -o -name .ruff_cache \
	     -o -name .pytest_cache \) -type d -print0 | xargs -0 rm -rf

distclean: clean ## Also remove the venv and node_modules
	rm -rf $(VENV) node_modules
