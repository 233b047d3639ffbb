# Every target sets itself up: a virtualenv in .venv with the project and its dev tools.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-all lint fmt clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)  ## the whole pipeline on the embedded broker: http://127.0.0.1:8080 (and a stand-in Incode API)
	$(BIN)/kycstream run --config deploy/kycstream.dev.yaml --fake-provider-api

test: $(STAMP)  ## unit + broker integration tests (slow ones excluded)
	$(BIN)/pytest -n 2 -m "not slow" tests

test-all: $(STAMP)
	$(BIN)/pytest -n 2 tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .venv-deploy .pytest_cache .mypy_cache .ruff_cache

.PHONY: deploy-check
deploy-check:  ## render, schema-validate (offline), checkov and yamllint deploy/ and the Dockerfile; no Docker engine
	bash deploy/check.sh

# End-to-end: `kycstream topics create`, `gateway` and `process` as subprocesses, every provider's
# fixtures over HTTP, then a reduced soak with repeats and the faults (processor SIGKILL, Kafka
# unreachable, gateway SIGTERM). Broker: $KAFKA_BOOTSTRAP_SERVERS, else Apache Kafka in Docker via
# testcontainers when an engine answers, else the embedded broker behind a TCP proxy
# (KYCSTREAM_E2E_BROKER=embedded|testcontainers forces one). The 60 s versions: make e2e E2E_MARK=e2e
E2E_MARK ?= e2e and not slow
.PHONY: e2e
e2e: $(STAMP)  ## end-to-end, load and fault tests through the CLI (a few minutes; prints the broker used)
	KYCSTREAM_E2E=1 $(BIN)/pytest -m "$(E2E_MARK)" --durations=15 tests/e2e

.PHONY: bench
bench: $(STAMP)  ## benchmarks (gateway, processor, end to end, dedup restore): tables, then one target line each
	$(BIN)/python bench/run.py  # the scripts install wrk (Debian) and bench/.venv-quix themselves if missing
