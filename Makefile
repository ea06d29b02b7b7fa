# The two commands of the README: `make demo` and `make test`. Each sets itself up.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_DEBS := wrk nghttp2-client memcached nginx haproxy
# Real programs the tests drive: bc behind a process backend, memcached and redis for the docs' examples.
TEST_DEBS := bc memcached redis-server

.PHONY: demo test lint bench clean test-debs bench-debs

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "adaptercar needs Python 3.11 or newer")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/adaptercar demo

lint: $(STAMP)
	$(PY) -m ruff check adaptercar legacy_fixtures tests benchmarks
	$(PY) -m mypy adaptercar benchmarks

test-debs:
	@missing=""; for t in bc memcached redis-server; do command -v $$t >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TEST_DEBS) >/dev/null; \
	  else echo "the tests need: sudo apt-get install -y $(TEST_DEBS)" >&2; exit 1; fi; fi

test: $(STAMP) test-debs bench-debs lint
	@$(PY) -m pytest -q -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure" >&2; exit 1; fi; exit $$rc

# Benchmarks need load generators from Debian packages.
bench-debs:
	@missing=""; for t in wrk h2load nghttp memcached nginx haproxy; do command -v $$t >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BENCH_DEBS) >/dev/null; \
	  else echo "benchmarks need: sudo apt-get install -y $(BENCH_DEBS)" >&2; exit 1; fi; fi

bench: $(STAMP) bench-debs
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
