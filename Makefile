# The two commands of the README: `make demo` and `make test`.
VENV ?= .venv
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test test-fast bench
setup:
	VENV=$(VENV) scripts/setup.sh

demo: setup
	$(VENV)/bin/depthcurate demo --data-root $(or $(DATA_ROOT),data/demo)

test: setup
	$(VENV)/bin/python -m pytest -q

test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not slow"

bench: setup
	$(VENV)/bin/python benchmarks/bench_sampling.py
