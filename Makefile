# The two set-up commands of the README, plus what developers run in between.
# Everything installs into .venv from the package registries; nothing needs a GPU or the Hub.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench-fetch bench-embeddings bench-cluster clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch from this machine's disk; a bare `torch` would pull a multi-GB CUDA build.
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)  ## the README's first command: the offline local demo on http://127.0.0.1:8000/v1
	$(BIN)/candle demo --port 8000

test: $(STAMP)  ## the README's test command: the main suite, then the simulated-cluster tests in their own process
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q
	$(BIN)/python -m pytest -q -m cluster tests/cluster

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench-fetch: $(STAMP)  ## benchmarks/bench_fetch.py: candle fetch vs snapshot_download over loopback
	$(BIN)/python benchmarks/bench_fetch.py

bench-embeddings: $(STAMP)  ## benchmarks/bench_embeddings.py: /v1/embeddings vs in-process encode
	$(BIN)/python benchmarks/bench_embeddings.py

bench-cluster: $(STAMP)  ## benchmarks/bench_cluster.py: hub bytes per cluster, peer vs hub throughput
	$(BIN)/python benchmarks/bench_cluster.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
