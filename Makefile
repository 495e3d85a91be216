# Streaming intent processor. `make help` lists the targets; CI runs `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the project with its dev tools

prometheus: ## Install Prometheus + promtool and a TLS redis-server from Debian's packages (tests use them)
	command -v promtool >/dev/null || (apt-get update -qq && apt-get install -y -qq prometheus)
	command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)

demo: $(STAMP) ## Run the embedded stack (broker, Redis), a worker and demo traffic; Ctrl-C stops all
	$(BIN)/intent dev

test: $(STAMP) ## Run the whole test suite (unit + integration on a real broker and Redis)
	$(BIN)/pytest

unit: $(STAMP) ## Run the unit tests only (no servers)
	$(BIN)/pytest tests/unit

bench: $(STAMP) ## End-to-end benchmark on the embedded stack (500k events; writes bench/results.json)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench.run $(BENCH_ARGS)

evidence: $(STAMP) ## Choose the default rules' points on the real sample files, leaving each out in turn (bench/evidence.py)
	$(BIN)/python -m bench.evidence

hotpath: $(STAMP) ## The pipeline's own µs per event on a real Redis, without the broker (bench/hotpath.py)
	$(BIN)/python -m bench.hotpath $(HOTPATH_ARGS)

floors: $(STAMP) ## What the machine allows before any rule runs: the transport's floors under the targets
	$(BIN)/python -m bench.floors $(FLOORS_ARGS)

failover: $(STAMP) ## Two workers, one killed with kill -9 mid-stream: events lost, duplicates, takeover time
	$(BIN)/python -m bench.failover $(FAILOVER_ARGS)

faults: $(STAMP) ## The fault suite's long variants: Redis killed, unreachable, slow; broker unreachable; zombie and killed workers
	$(BIN)/pytest -m faults -s tests/faults $(FAULTS_ARGS)

lint: $(STAMP) ## ruff check and format check
	$(BIN)/ruff check stream schemas tests bench
	$(BIN)/ruff format --check stream schemas tests bench

typecheck: $(STAMP) ## mypy --strict on stream/, schemas/ and bench/
	$(BIN)/mypy

check: lint typecheck test ## What CI runs

clean: ## Remove the virtualenv and run folders
	rm -rf $(VENV) .intent .pytest_cache .mypy_cache .ruff_cache

.PHONY: help install prometheus demo bench evidence hotpath floors failover faults test unit lint typecheck check clean
