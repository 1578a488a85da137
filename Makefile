# spotkeeper — everything runs from here. `make test` is what CI runs; `make demo` is the drill.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV     ?= .venv
SAM_VENV ?= .venv-sam
CHECKOV_VENV ?= .venv-checkov
PY       := $(VENV)/bin/python
# Python 3.13 is the Lambda runtime. pyenv installs keep it off the default PATH.
PY313    := $(shell PYENV_VERSION=3.13.0 python3.13 -c 'import sys; print(sys.executable)' 2>/dev/null || command -v python3.13 2>/dev/null)
export SAM_CLI_TELEMETRY := 0
export AWS_DEFAULT_REGION ?= us-east-1
# sam build resolves "python3.13" on PATH for the runtime; the venv has it.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: help dev check-python lint cfn-lint checkov sam-validate build unit pytest-all test demo bench format clean preflight status keys

help:
	@echo "make demo   - the game day drill on an embedded local AWS"
	@echo "make test   - linters, template checks, sam build and the whole pytest suite (what CI runs)"
	@echo "make unit   - the pytest suite without the slow tests (drill subprocesses, races, schemathesis, bench smoke)"
	@echo "make bench  - benchmarks (not part of make test)"
	@echo "make dev    - create .venv (Python 3.13) with everything the tests need"
	@echo "make preflight ENV=<samconfig env> [OVERRIDES='Key=Value ...'] - check an account before sam deploy"
	@echo "make status STACK=<stack> [WATCH=1]                            - a deployed stack at a glance"

check-python:
	@if [ -z "$(PY313)" ]; then \
	  echo "error: Python 3.13 (the Lambda runtime) was not found."; \
	  echo "       Install it (e.g. 'pyenv install 3.13.0') or put python3.13 on PATH."; exit 1; fi

$(VENV)/.stamp: requirements-dev.txt layers/spotkeeper/requirements.txt functions/gateway/requirements.txt | check-python
	@test -x $(PY) || $(PY313) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv
	$(VENV)/bin/uv pip install -q --python $(PY) -r requirements-dev.txt
	@touch $@

$(SAM_VENV)/.stamp: | check-python
	@test -x $(SAM_VENV)/bin/python || $(PY313) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install -q --disable-pip-version-check uv
	$(SAM_VENV)/bin/uv pip install -q --python $(SAM_VENV)/bin/python aws-sam-cli==1.170.0
	@touch $@

# checkov pins its own dependency tree, so it gets a venv of its own.
$(CHECKOV_VENV)/.stamp: | check-python
	@test -x $(CHECKOV_VENV)/bin/python || $(PY313) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q --disable-pip-version-check uv
	$(CHECKOV_VENV)/bin/uv pip install -q --python $(CHECKOV_VENV)/bin/python checkov==3.3.30
	@touch $@

dev: $(VENV)/.stamp $(SAM_VENV)/.stamp $(CHECKOV_VENV)/.stamp

format: $(VENV)/.stamp
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

lint: $(VENV)/.stamp
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

cfn-lint: $(VENV)/.stamp
	$(VENV)/bin/cfn-lint template.yaml

# Skips are written next to each resource (Metadata.checkov.skip) with the reason.
checkov: $(CHECKOV_VENV)/.stamp
	BC_SKIP_MAPPING=TRUE $(CHECKOV_VENV)/bin/checkov -f template.yaml --framework cloudformation --skip-download \
	  --compact --quiet

sam-validate: $(SAM_VENV)/.stamp
	AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing $(SAM_VENV)/bin/sam validate --lint --region $(AWS_DEFAULT_REGION)

build: $(SAM_VENV)/.stamp $(VENV)/.stamp
	$(SAM_VENV)/bin/sam build --parallel

# The quick local loop: everything but the tests marked slow (see pyproject's markers).
unit: $(VENV)/.stamp
	$(PY) -m pytest -m "not slow"

pytest-all: $(VENV)/.stamp
	$(PY) -m pytest

test: lint cfn-lint checkov sam-validate build pytest-all

# The drill's four scenario files; DEMO_ARGS="--scenario all" plays every file of scenarios/, DEMO_ARGS="--scenario-file
# my-game-day.yaml" your own (any drill option passes through).
demo: $(VENV)/.stamp
	PYTHONPATH=layers/spotkeeper:local $(PY) -m spotkeeper_local.drill $(DEMO_ARGS)

# Gateway overhead, cold starts, reactions, failover and cost; tables on stdout, build/bench/results.json.
# BENCH_ARGS passes options through, e.g. make bench BENCH_ARGS="--quick" or "--only cold".
bench: $(VENV)/.stamp $(SAM_VENV)/.stamp
	PYTHONPATH=layers/spotkeeper:local $(PY) bench/run.py $(BENCH_ARGS)

# Operator commands (ops/spotkeeper_ops, never shipped to Lambda), with your AWS credentials.
OPS := PYTHONPATH=layers/spotkeeper:ops $(PY) -m spotkeeper_ops

preflight: $(VENV)/.stamp
	$(OPS) preflight $(if $(ENV),--config-env $(ENV)) $(if $(OVERRIDES),--parameter-overrides $(OVERRIDES))

status: $(VENV)/.stamp
	$(OPS) status --stack $(or $(STACK),spotkeeper) $(if $(WATCH),--watch)

keys: $(VENV)/.stamp
	$(OPS) keys $(ARGS)

clean:
	rm -rf .aws-sam .pytest_cache .ruff_cache
