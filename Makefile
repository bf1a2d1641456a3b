# The two set-up commands of the README, plus what developers run in between.
# Everything installs into .venv from the package registries; nothing needs a GPU or the Hub.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint bench-fetch clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch from this machine's disk; a bare `torch` would pull a multi-GB CUDA build.
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)  ## the README's test command
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench-fetch: $(STAMP)  ## benchmarks/bench_fetch.py: candle fetch vs snapshot_download over loopback
	$(BIN)/python benchmarks/bench_fetch.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
