# The two commands of the README: `make demo` and `make test`.
VENV ?= .venv
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo lint test test-fast bench
setup:
	VENV=$(VENV) scripts/setup.sh

DEMO_ROOT = $(or $(DATA_ROOT),data/demo)

# Curate the demo catalog, train a few dozen CPU steps on it, print the evaluation. Both fit (into
# runs/demo/metrics.json) and evaluate score against the rendered depth named by demo.yaml's eval.ground_truth.
demo: setup
	$(VENV)/bin/depthcurate demo --data-root $(DEMO_ROOT)
	$(VENV)/bin/python -m trainer fit --manifest $(DEMO_ROOT)/manifest/demo.parquet \
		--config trainer/configs/demo.yaml --out-dir $(DEMO_ROOT)/runs/demo --resume
	$(VENV)/bin/python -m trainer evaluate --checkpoint $(DEMO_ROOT)/runs/demo/checkpoints/last.pt \
		--manifest $(DEMO_ROOT)/manifest/demo.parquet

# ruff (lint and format) over the tree, mypy over pipeline/, trainer/ and flows/ (settings in pyproject.toml).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: setup lint
	$(VENV)/bin/python -m pytest -q

test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not slow"

bench: setup
	$(VENV)/bin/python -m benchmarks.bench_sampling
