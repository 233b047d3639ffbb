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

run: $(STAMP)  ## the whole pipeline on the embedded broker: http://127.0.0.1:8080
	$(BIN)/kycstream run --config deploy/kycstream.dev.yaml

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
