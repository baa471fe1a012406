# Everything runs from a project-local virtual environment (.venv), created on demand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo up test test-fast lint bench k8s-config clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU wheel first: a bare torch requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## demo: run the platform on embedded PostgreSQL/Redis and a local Ray, with a demo tenant
demo: install
	$(BIN)/atp demo

## up: run the platform with the configured (or embedded) services
up: install
	$(BIN)/atp up

## test: the whole suite (needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379)
test: install
	$(BIN)/pytest

## test-fast: everything but the slow embedded start-up test
test-fast: install
	$(BIN)/pytest -m "not embedded"

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

## bench: the benchmark scripts (uses wrk when installed: apt-get install wrk)
bench: install
	cd benchmarks && ../$(BIN)/python gateway.py
	cd benchmarks && ../$(BIN)/python provisioning.py
	cd benchmarks && ../$(BIN)/python tick_to_trade.py
	cd benchmarks && ../$(BIN)/python metering.py
	cd benchmarks && ../$(BIN)/python agent_sync.py
	cd benchmarks && ../$(BIN)/python backtest.py
	cd benchmarks && ../$(BIN)/python model_serving.py

## k8s-config: copy ray-cluster.yaml into k8s/base and regenerate the RayServices' Serve
## configs with `serve build` (tests/k8s/test_manifests.py fails when they are stale)
k8s-config: install
	cp ray-cluster.yaml k8s/base/ray-cluster.yaml
	$(BIN)/python -m serve.serve_config

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
