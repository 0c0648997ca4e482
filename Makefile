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
DEPLOY_STAMP = $(VENV)/.zumik-deploy.stamp
CHECKOV_VENV ?= .venv-checkov
CHECKOV_STAMP = $(CHECKOV_VENV)/.zumik-checkov.stamp
LINT_PATHS = $(wildcard service clients tests bench scripts)
MYPY_PATHS = service clients/python/src/zumik_secrets_client scripts
GENERATED = clients/python/src service/zumik_secrets/server/contracts.binpb

.PHONY: help venv node_modules proto proto-check buf-lint buf-breaking buf-release-snapshot \
	client-check dist lint fmt \
	test fuzz sbom lock release verify-release controls run bench bench-quick clean distclean \
	deploy-tools deploy-check monitoring-rules monitoring-live probe-cost

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

# ------------------------------------------------------------------------------ environment

# The client is installed editable (like the service) so `make proto` takes effect at once;
# `make client-check` installs it for real into a scratch venv to test the packaging.
$(VENV_STAMP): pyproject.toml clients/python/pyproject.toml requirements/build.lock requirements/dev.lock
	@if [ -z "$(PYTHON)" ] || \
	   ! $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
	  echo "error: Python 3.11+ is required but PYTHON='$(PYTHON)' is missing or older;" \
	    "install python3.11+ or run with PYTHON=/path/to/python3.11" >&2; exit 1; fi
	@if [ ! -x $(PY) ]; then echo "venv: creating $(VENV) with $$($(PYTHON) --version)"; \
	  $(PYTHON) -m venv $(VENV); fi
	@$(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "error: $(VENV) runs Python < 3.11; remove it and rerun" >&2; exit 1; }
	@# Third-party code only from the hashed locks (`make lock` regenerates them); build tools
	@# first, so that sdists and the local packages build without fetching anything unhashed.
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes \
	  -r requirements/build.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes \
	  --no-build-isolation -r requirements/dev.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation \
	  -e ./clients/python -e '.[dev]'
	@$(PY) -m pip check >/dev/null || { $(PY) -m pip check; \
	  echo "error: requirements/*.lock do not satisfy pyproject.toml: run 'make lock'" >&2; exit 1; }
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

$(DEPLOY_STAMP): $(VENV_STAMP) deploy/requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r deploy/requirements.txt
	@touch $@

# checkov gets a venv of its own (its pinned dependencies would fight the service's); about a
# minute to install from scratch.
$(CHECKOV_STAMP): deploy/requirements-checkov.txt
	@if [ ! -x $(CHECKOV_VENV)/bin/python ]; then $(PYTHON) -m venv $(CHECKOV_VENV); fi
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
	  -r deploy/requirements-checkov.txt
	@touch $@

deploy-tools: $(DEPLOY_STAMP) $(CHECKOV_STAMP) ## Install the pinned deployment checkers

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

# The last released contract: a committed buf image (see proto/breaking/README.md). Comparing
# with branch main instead would compare main with itself in CI.
BUF_RELEASED = proto/breaking/released.binpb
BUF_AGAINST ?= $(BUF_RELEASED)
buf-breaking: $(NODE_STAMP) ## buf breaking (FILE) against the last released contract (BUF_AGAINST)
	npx --no-install buf breaking --against '$(BUF_AGAINST)'

buf-release-snapshot: $(NODE_STAMP) ## After a release: make the current proto/ the released baseline
	npx --no-install buf build --exclude-source-info -o $(BUF_RELEASED)

client-check: $(VENV_STAMP) ## Install clients/python[typing] into a scratch venv; mypy --strict its README
	PYTHON=$(PYTHON) DEV_PY=$(PY) scripts/client_check.sh

DIST ?= dist
dist: $(VENV_STAMP) ## sdist + wheel of client and service in dist/, twine check, install in a clean venv
	PYTHON=$(PYTHON) DEV_PY=$(PY) DIST=$(abspath $(DIST)) scripts/dist.sh

# ------------------------------------------------------------------------------ quality

lint: $(VENV_STAMP) $(NODE_STAMP) ## ruff check + format check, mypy --strict, buf lint
	@status=0; \
	echo "+ ruff check"; $(PY) -m ruff check $(LINT_PATHS) || status=1; \
	echo "+ ruff format --check"; $(PY) -m ruff format --check $(LINT_PATHS) || status=1; \
	echo "+ mypy --strict"; $(PY) -m mypy --strict $(MYPY_PATHS) || status=1; \
	echo "+ buf-lint"; $(MAKE) buf-lint || status=1; \
	echo "+ bandit"; $(PY) -m bandit -q -c pyproject.toml -r service \
	  clients/python/src/zumik_secrets_client || status=1; \
	echo "+ insecure-transport check"; \
	  $(PY) scripts/check_no_insecure_transport.py service clients || status=1; \
	exit $$status

fmt: $(VENV_STAMP) $(NODE_STAMP) ## Apply ruff format, ruff's safe fixes and buf format
	$(PY) -m ruff format $(LINT_PATHS)
	$(PY) -m ruff check --fix $(LINT_PATHS) || true
	npx --no-install buf format -w

# tests/integration/test_deploy_check.py runs deploy-check (on deploy/ and on a broken copy).
# make controls reads $(TEST_JUNIT) instead of running the mapped tests again.
TEST_JUNIT ?= build/test-results.xml
test: $(VENV_STAMP) $(NODE_STAMP) $(DEPLOY_STAMP) $(CHECKOV_STAMP) ## proto-check, lint, buf-breaking, then the whole pytest suite
	$(MAKE) proto-check
	$(MAKE) lint
	$(MAKE) buf-breaking
	$(PY) -m pytest -p no:cacheprovider --junitxml=$(TEST_JUNIT) $(PYTEST_ARGS)

# The same fuzz tests `make test` runs with 25 examples per case, with ZUMIK_FUZZ_EXAMPLES (500)
# random examples each; see tests/security/README.md.
ZUMIK_FUZZ_EXAMPLES ?= 500
fuzz: $(VENV_STAMP) ## Long fuzzing run: every RPC and core parser (ZUMIK_FUZZ_EXAMPLES=500 each)
	ZUMIK_FUZZ_PROFILE=long ZUMIK_FUZZ_EXAMPLES=$(ZUMIK_FUZZ_EXAMPLES) \
	  $(PY) -m pytest -p no:cacheprovider -m fuzz -q -rA tests/security $(PYTEST_ARGS)

# ------------------------------------------------------------------------------ supply chain

SBOM ?= build/sbom.cdx.json
sbom: $(VENV_STAMP) sbom-image ## CycloneDX SBOMs in build/: the image's runtime venv and the dev venv
	@mkdir -p $(dir $(SBOM))
	$(VENV)/bin/cyclonedx-py environment --output-reproducible --of JSON -o $(SBOM) $(PY)
	@echo "sbom: $(SBOM) ($$(grep -c '"bom-ref"' $(SBOM)) components)"

LOCK_FLAGS = --quiet --generate-hashes --python-version 3.11 --universal
lock: $(VENV_STAMP) ## Regenerate requirements/*.lock (hashed pins) from requirements/*.in
	$(VENV)/bin/uv pip compile $(LOCK_FLAGS) requirements/build.in -o requirements/build.lock
	$(VENV)/bin/uv pip compile $(LOCK_FLAGS) requirements/dev.in -c requirements/build.lock \
	  --no-emit-package zumik-secrets --no-emit-package zumik-secrets-client \
	  -o requirements/dev.lock
	$(VENV)/bin/uv pip compile $(LOCK_FLAGS) requirements/runtime.in -c requirements/dev.lock \
	  --no-emit-package zumik-secrets --no-emit-package zumik-secrets-client \
	  -o requirements/runtime.lock

# ------------------------------------------------------------------------------ release (issue 22)
# Signed release in build/release: sdists + wheels (service, client), the build SBOM, SLSA v1
# provenance in a DSSE envelope and a signed SHA256SUMS (Ed25519 release key; dev key in
# var/release/, or ZUMIK_RELEASE_KEY). docs/security/releases.md has the production path.
RELEASE_DIR ?= build/release
RELEASE_PUBKEY ?= build/release-key.pub.pem

release: $(VENV_STAMP) ## Build, describe (SBOM, SLSA provenance) and sign a release in build/release
	$(PY) scripts/release.py --out $(RELEASE_DIR)

verify-release: $(VENV_STAMP) ## Verify build/release offline (every signature and digest)
	$(VENV)/bin/zumik-secrets verify-release $(RELEASE_DIR) --key $(RELEASE_PUBKEY)

# The controls checklist (security/controls.toml -> docs/security/controls.md). With
# CONTROLS_JUNIT (make test writes $(TEST_JUNIT)) it reads those results instead of running the
# mapped tests again.
CONTROLS_JUNIT ?=
controls: $(VENV_STAMP) ## Verify every security control's evidence; render docs/security/controls.md
	$(PY) scripts/controls.py $(if $(CONTROLS_JUNIT),--junit $(CONTROLS_JUNIT),-- -n 2)

# ------------------------------------------------------------------------------ deploy

deploy-check: $(DEPLOY_STAMP) $(CHECKOV_STAMP) ## Build and check deploy/ offline (see deploy/README.md)
	CHECKOV=$(CHECKOV_VENV)/bin/checkov $(PY) scripts/deploy_check.py

# ------------------------------------------------------------------------------ monitoring
# docs/observability.md. promtool and prometheus: the Debian package `prometheus` (.ci/run
# installs it); deploy-check runs `promtool check rules` and `promtool test rules`.

monitoring-rules: $(VENV_STAMP) ## Regenerate the PrometheusRule from deploy/k8s/monitoring/rules
	$(PY) scripts/gen_prometheusrule.py

monitoring-live: $(VENV_STAMP) ## A real Prometheus scrapes a real server and evaluates the alerts
	$(PY) scripts/monitoring_live.py

probe-cost: $(VENV_STAMP) ## CPU per health probe: exec probe vs the health-only listener
	$(PY) scripts/probe_cost.py

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

distclean: clean ## Also remove the venvs and node_modules
	rm -rf $(VENV) $(CHECKOV_VENV) node_modules

# ------------------------------------------------------------------------------ day-two operations
# Issue 21's targets, kept in one block: backup/restore drill, image, image SBOM.
# docs/operations/ explains them; tests/integration/test_operations.py runs the drill and the
# runbooks under `make test`.

.PHONY: restore-drill image sbom-image

restore-drill: $(VENV_STAMP) ## Backup + point-in-time restore drill on a throwaway PostgreSQL (11-50 s)
	$(PY) scripts/restore_drill.py

IMAGE ?= zumik-secrets:dev
PYTHON_IMAGE ?= python:3.11-slim-bookworm
image: ## docker build deploy/Dockerfile (PYTHON_IMAGE= a locally built base; see deploy/README.md)
	@command -v docker >/dev/null 2>&1 || \
	  { echo "error: no docker CLI here; see deploy/README.md (The image)" >&2; exit 1; }
	docker build -f deploy/Dockerfile --build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) -t $(IMAGE) .

# The image's SBOM describes what deploy/Dockerfile installs: the same commands (runtime.lock with
# --require-hashes, the two local wheels built with build.lock's tools, --no-deps) run here into
# a scratch venv, which cyclonedx-py then describes. No dev tool is in it.
IMAGE_VENV = build/image-venv
SBOM_IMAGE ?= build/sbom-image.cdx.json
sbom-image: $(VENV_STAMP) ## CycloneDX SBOM of the image's runtime venv (built as the Dockerfile does)
	@rm -rf $(IMAGE_VENV) build/image-wheels && mkdir -p build
	$(PYTHON) -m venv $(IMAGE_VENV)
	$(IMAGE_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes \
	  --only-binary=:all: --no-deps -r requirements/runtime.lock
	$(PY) -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation \
	  --wheel-dir build/image-wheels ./clients/python .
	$(IMAGE_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
	  --no-index build/image-wheels/*.whl
	$(IMAGE_VENV)/bin/python -m pip check
	$(IMAGE_VENV)/bin/python -m pip uninstall --quiet --yes pip setuptools
	$(IMAGE_VENV)/bin/zumik-secrets --help >/dev/null
	$(VENV)/bin/cyclonedx-py environment --output-reproducible --of JSON -o $(SBOM_IMAGE) \
	  $(IMAGE_VENV)/bin/python
	@echo "sbom: $(SBOM_IMAGE) ($$(grep -c '"bom-ref"' $(SBOM_IMAGE)) components, runtime only)"
