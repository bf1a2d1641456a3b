# The two set-up commands of the README, plus what developers run in between.
# Everything installs into .venv from the package registries; nothing needs a GPU or the Hub.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PARSERS_VENV := .venv-vllm-parsers
PARSERS_STAMP := $(PARSERS_VENV)/.installed

.PHONY: demo test lint bench-fetch bench-embeddings bench-cluster clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch from this machine's disk; a bare `torch` would pull a multi-GB CUDA build.
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

# vLLM's parsers are plain Python, but vLLM pins a CUDA torch: this venv layers the vllm wheel and
# the few modules its parsers import (no dependencies) over .venv, so the real parsers run on CPU.
$(PARSERS_STAMP): $(STAMP) tests/vllm-parsers-requirements.txt
	$(PYTHON) -m venv $(PARSERS_VENV)
	dev=$$($(BIN)/python -c 'import site; print(site.getsitepackages()[0])'); \
	own=$$($(PARSERS_VENV)/bin/python -c 'import site; print(site.getsitepackages()[0])'); \
	echo "import site; site.addsitedir('$$dev')" > "$$own/candle-dev-venv.pth"
	$(PARSERS_VENV)/bin/pip install -q --no-deps -r tests/vllm-parsers-requirements.txt
	touch $(PARSERS_STAMP)

demo: $(STAMP)  ## the README's first command: the offline local demo on http://127.0.0.1:8000/v1
	$(BIN)/candle demo --port 8000

test: $(STAMP) $(PARSERS_STAMP)  ## the README's test command: main suite, simulated cluster, vLLM's parsers
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q
	$(BIN)/python -m pytest -q -m cluster tests/cluster
	$(PARSERS_VENV)/bin/python -c "import vllm.parser.parser_manager"  # fail loudly, not skip, if it broke
	$(PARSERS_VENV)/bin/python -m pytest -q tests/test_vllm_parsing.py

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
	rm -rf $(VENV) $(PARSERS_VENV) .pytest_cache .ruff_cache
