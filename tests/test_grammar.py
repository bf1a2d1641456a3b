"""Response formats compiled into grammars on a text replica (issue 22, item 1), in-process on the tiny Qwen3.

xgrammar's compile is C++ that nothing can interrupt once started, and some small schemas take
minutes (2,000 optional properties; one counted repetition in a pattern). These tests hold the
replica to what it promises: the compile leaves its event loop free, a compile past the model's
budget is stopped (its process killed) and refused with a 400 naming the budget, and a schema seen
before is not compiled again.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import psutil
import pytest

from candle.catalog import ModelSpec
from candle.contracts import ChatCall, GenerationParams, ResponseFormat
from candle.demo.tiny_models import TINY_MODELS, build_tiny_store
from candle.engines import load_engine
from candle.engines.chat.transformers import TransformersTextEngine
from candle.engines.errors import InvalidInput
from deployments.replicas.chat import ChatReplica

BUDGET_S = 2.0
PICK = {
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 9},
    },
    "required": ["color", "count"],
    "additionalProperties": False,
}
# Compiles in a few tenths of a second on the tiny vocabulary: long enough to watch the loop during it.
SLOWISH = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(500)}}
# A 46-byte pattern whose compile grows with the square of its count: about 3 s at 3,000, far past
# BUDGET_S at 8,000 on any machine.
RUNAWAY = {"type": "string", "pattern": "^(a|b){8000}$"}


def schema_format(schema: dict[str, Any]) -> ResponseFormat:
    return ResponseFormat("json_schema", json.dumps(schema), "test")


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> TransformersTextEngine:
    folder = build_tiny_store(tmp_path_factory.mktemp("grammar-store"), ["qwen3"])["qwen3"]
    spec = ModelSpec(
        name="qwen3",
        capability="text-to-text",
        repo_id=TINY_MODELS["qwen3"],
        limits={"schema_compile_timeout_s": BUDGET_S},
    )
    engine = load_engine(spec, folder)
    assert isinstance(engine, TransformersTextEngine)
    return engine


def compiling_process(engine: TransformersTextEngine) -> psutil.Process:
    """The engine's own compiling process (not any spawned process: Ray workers under this test
    process run other engines' compilers, which a whole-suite run leaves alive)."""
    pid = engine.grammars.trial.pid
    assert pid is not None, "a compile ran, so a compiling process exists"
    return psutil.Process(pid)


def test_a_repeated_schema_is_compiled_once(qwen: TransformersTextEngine, monkeypatch: pytest.MonkeyPatch):
    compiles: list[str] = []
    compile_json_schema = qwen.grammars.compiler.compile_json_schema

    def counted(schema: str, **kwargs: Any) -> Any:
        compiles.append(schema)
        return compile_json_schema(schema, **kwargs)

    monkeypatch.setattr(qwen.grammars.compiler, "compile_json_schema", counted)
    first = qwen.grammars.processor(schema_format(PICK))
    second = qwen.grammars.processor(schema_format(PICK))
    assert first is not None and second is not None and first is not second  # processors are single-use
    assert second.compiled_grammars[0] is first.compiled_grammars[0]
    assert len(compiles) == 1, f"the same schema was compiled {len(compiles)} times"


async def test_the_replica_loop_runs_while_a_schema_compiles(
    qwen: TransformersTextEngine, monkeypatch: pytest.MonkeyPatch
):
    """The loop ticks strictly inside the compile's own start and end: it ran while the compile did."""
    compiles: list[tuple[float, float]] = []
    compile_json_schema = qwen.grammars.compiler.compile_json_schema

    def timed(schema: str, **kwargs: Any) -> Any:
        start = time.monotonic()
        try:
            return compile_json_schema(schema, **kwargs)
        finally:
            compiles.append((start, time.monotonic()))

    monkeypatch.setattr(qwen.grammars.compiler, "compile_json_schema", timed)
    replica = ChatReplica.__new__(ChatReplica)  # the replica's logic, without Serve's actor
    replica.engine = qwen
    replica.spec = ModelSpec(name="qwen3", capability="text-to-text", repo_id=TINY_MODELS["qwen3"])
    ticks: list[float] = []

    async def tick() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.005)

    ticker = asyncio.create_task(tick())
    try:
        params = GenerationParams(max_tokens=2, temperature=0, response_format=schema_format(SLOWISH))
        chunks = [chunk async for chunk in replica.chat(ChatCall([{"role": "user", "content": "hi"}], params))]
    finally:
        ticker.cancel()
    assert chunks[-1].finish_reason is not None
    ((start, end),) = compiles
    during = [t for t in ticks if start < t < end]
    assert len(during) >= 2, f"the loop ticked {len(during)} times during a {end - start:.2f}s compile"


def test_a_compile_past_the_budget_is_stopped_and_refused(qwen: TransformersTextEngine):
    assert qwen.grammars.processor(schema_format(PICK)) is not None  # the compiling process is up
    before = compiling_process(qwen)
    started = time.monotonic()
    with pytest.raises(InvalidInput, match=rf"did not compile within {BUDGET_S:g}s") as refused:
        qwen.grammars.processor(schema_format(RUNAWAY))
    assert "schema_compile_timeout_s" in str(refused.value)
    assert time.monotonic() - started < 10 * BUDGET_S  # refused near the budget, not after the compile
    # Stopped, not abandoned: the process that ran the compile is gone (killed and reaped).
    assert not before.is_running() and qwen.grammars.trial.pid is None
    other = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    assert qwen.grammars.processor(schema_format(other)) is not None  # a fresh process compiles the next one
    assert compiling_process(qwen).pid != before.pid


def test_an_uncompilable_schema_is_invalid_input_naming_the_reason(qwen: TransformersTextEngine):
    with pytest.raises(InvalidInput, match="Lookbehind is not supported"):
        qwen.grammars.processor(schema_format({"type": "string", "pattern": "(?<=a)b"}))


def test_a_compile_process_that_dies_is_replaced(qwen: TransformersTextEngine):
    assert qwen.grammars.processor(schema_format(PICK)) is not None
    killed = compiling_process(qwen)
    killed.kill()  # as the OOM killer would: the engine is not told, and reaps it only when it looks
    deadline = time.monotonic() + 30
    while killed.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.05)
    assert killed.status() == psutil.STATUS_ZOMBIE
    fresh = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    assert qwen.grammars.processor(schema_format(fresh)) is not None
    assert compiling_process(qwen).pid != killed.pid


def test_a_compile_whose_process_is_killed_from_outside_is_tried_again(qwen: TransformersTextEngine):
    """Killed mid-compile (the OOM killer's choice, not the schema's fault): a fresh process compiles
    the schema again, so the request fails only on what the retry finds (here the budget)."""
    assert qwen.grammars.processor(schema_format(PICK)) is not None
    first = compiling_process(qwen)
    outcome: list[BaseException] = []

    def compile_runaway() -> None:
        try:
            qwen.grammars.processor(schema_format(RUNAWAY))
        except BaseException as e:  # handed to the test thread
            outcome.append(e)

    compiling = threading.Thread(target=compile_runaway)
    compiling.start()
    time.sleep(BUDGET_S / 4)
    assert compiling.is_alive() and first.is_running()  # the compile is still running on the first process
    first.kill()
    compiling.join(30)
    assert not compiling.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], InvalidInput)
    assert f"did not compile within {BUDGET_S:g}s" in str(outcome[0])  # the retry ran, to the budget
