# mmpipeline: the two commands a new user needs are `make run` and `make test`.
# Each bootstraps .venv from the lock file when it is missing or stale.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATASET ?= homedepot

.PHONY: venv run test bench airflow-ui clean-var cluster-test

$(STAMP): requirements/lock.txt pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv==0.9.30
	$(BIN)/uv pip sync --python $(BIN)/python requirements/lock.txt
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP)

## run: the nightly pipeline (all three DAGs through Airflow) on the sample data, locally
run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/run_nightly.sh $(DATASET)

## test: the whole test suite (real Spark, Delta, MLflow, GE, Airflow on small data)
test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q $(PYTEST_ARGS)

## cluster-test: embed + score through spark-submit on a loopback standalone cluster (a master and
## two workers started from the pyspark install, always stopped); tables must equal a local run's
cluster-test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q tests/integration/test_cluster_standalone.py $(PYTEST_ARGS)

## bench: every benchmark, JSON to var/bench/
bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/bench_all.sh

## airflow-ui: Airflow locally (api-server + scheduler + dag-processor) on http://127.0.0.1:8080
airflow-ui: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/airflow_ui.sh

clean-var:
	rm -rf var
