# Developer entry points. `make run` starts a private PostgreSQL + Redis (seatd.devstack, never
# the system services on 5432/6379) and serves on $(PORT); `make test` runs the suite, which
# starts its own throwaway instances.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEVSTACK := $(PY) -m seatd.devstack
# Loads the devstack's POSTGRES_*/REDIS_*/SEATD_JWT_SECRET into the recipe's shell; an
# assignment keeps the command's exit status, so `set -e` stops on failure (a bare eval would not).
LOAD_ENV := set -euo pipefail; devstack_env="$$($(DEVSTACK) env)"; eval "$$devstack_env"
# `make run` leaves its server's pid here (one file per PORT), so `make stop` can stop it too.
SERVE_PIDS := .seatd/serve-*.pid
STOP_SERVERS := for f in $(SERVE_PIDS); do \
	  [[ -f "$$f" ]] || continue; pid="$$(cat "$$f")"; \
	  if ps -p "$$pid" -o args= 2>/dev/null | grep -q "seatd serve"; then \
	    echo "stopping seatd (pid $$pid)"; kill -TERM "$$pid"; \
	    for _ in $$(seq 150); do kill -0 "$$pid" 2>/dev/null || break; sleep 0.1; done; \
	  fi; rm -f "$$f"; \
	done

PORT ?= 8080
SUB ?= alice
ROLE ?= user
PYTEST_ARGS ?=
FUZZ_FRAMES ?= 2000000
BENCH_ARGS ?=

.PHONY: help venv deps services run stop token test lint clean bench bench-quick fuzz

help:
	@echo "make run      start PostgreSQL + Redis (private ports), init the db, serve on PORT=$(PORT)"
	@echo "make stop     stop what make run started: seatd, the dev PostgreSQL + Redis"
	@echo "make token    print a JWT (SUB=$(SUB) ROLE=$(ROLE))"
	@echo "make test     run the test suite (PYTEST_ARGS=...)"
	@echo "make lint     ruff check, ruff format --check, mypy"
	@echo "make bench    every benchmark scenario, short version (seatd bench all --quick)"
	@echo "make fuzz     the protocol fuzzer, long (FUZZ_FRAMES=$(FUZZ_FRAMES); SEATD_FUZZ_SEED=n replays)"
	@echo "make clean    stop the dev services, delete their data and the caches"

venv: $(STAMP)

# Reinstall only when pyproject.toml changed since the last install.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test,bench]'
	@touch $@

deps:
	@PYTHON='$(PYTHON)' bash scripts/ensure-system-deps.sh

services: deps venv
	@$(DEVSTACK) up

run: deps venv services
	@pid="$$(cat .seatd/serve-$(PORT).pid 2>/dev/null || true)"; \
	if [[ -n "$$pid" ]] && ps -p "$$pid" -o args= 2>/dev/null | grep -q "seatd serve"; then \
	  echo "seatd is already running on port $(PORT) (pid $$pid): make stop first" >&2; exit 1; \
	fi
	@$(LOAD_ENV); \
	$(VENV)/bin/seatd init-db; \
	$(VENV)/bin/seatd create-event --demo; \
	export PORT='$(PORT)'; \
	echo $$$$ > .seatd/serve-$(PORT).pid; \
	exec $(VENV)/bin/seatd serve

stop:
	@$(STOP_SERVERS)
	@$(DEVSTACK) down

token: venv
	@$(LOAD_ENV); $(VENV)/bin/seatd token --sub '$(SUB)' --role '$(ROLE)'

test: deps venv
	$(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Every scenario's short version against a throwaway durable PostgreSQL + Redis (< 3 minutes),
# then events on 1 and 3 instances: the cost of forwarding (BENCHMARKS.md, Several instances).
bench: deps venv
	$(VENV)/bin/seatd bench all --quick $(BENCH_ARGS)
	$(VENV)/bin/seatd bench events --quick --instances 1,3 --duration 4 $(BENCH_ARGS)

bench-quick: bench

clean:
	@$(STOP_SERVERS)
	@if [[ -x $(PY) ]]; then $(DEVSTACK) purge; fi
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +

# The protocol fuzzer, long: FUZZ_FRAMES hostile frames (a fresh Hypothesis corpus every tenth),
# then a minute of abuse under the history checker. SEATD_FUZZ_SEED=<n> replays a run.
# (make test runs the same tests with 100,000 frames and 8 s of abuse.)
fuzz: deps venv
	SEATD_FUZZ_FRAMES=$(FUZZ_FRAMES) SEATD_FUZZ_ROUNDS=10 SEATD_FUZZ_CORPUS=3000 \
	SEATD_FUZZ_SECONDS=3600 SEATD_FUZZ_ABUSE_SECONDS=60 \
	$(PY) -m pytest -p no:cacheprovider tests/fuzz $(PYTEST_ARGS)
