"""vLLM's sleep mode driven by traffic (``sleep_after_s``): asleep after the idle time, awake again before
the next request runs, never asleep under a request, one wake for many waiting requests.

vLLM's sleep mode runs on CUDA and ROCm only, so here the engine is a recorder with the two methods
``IdleSleep`` calls (``Sleeper``); tests/test_gpu_serving.py drives a real vLLM engine on a GPU, and
tests/test_vllm_engine.py checks that vLLM's CPU build refuses the entry with candle's message.
"""

from __future__ import annotations

import asyncio

import pytest

from candle.catalog import ModelSpec
from candle.engines.chat.idle_sleep import IdleSleep

IDLE_S = 0.4


class Recorder:
    """Sleeps and wakes as vLLM's engine does, slowly enough for requests to queue behind a wake."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.asleep = False

    async def sleep(self, level: int = 1) -> None:
        self.calls.append(f"sleep {level}")
        self.asleep = True

    async def wake_up(self, tags: list[str] | None = None) -> bool:
        await asyncio.sleep(0.05)
        self.calls.append("wake")
        self.asleep = False
        return True


async def request(idle: IdleSleep, engine: Recorder, seconds: float = 0.0) -> bool:
    """One request: whether the engine was awake all the while it ran."""
    async with idle.awake():
        awake = not engine.asleep
        await asyncio.sleep(seconds)
        return awake and not engine.asleep


async def test_the_engine_sleeps_after_the_idle_time_and_the_next_request_wakes_it_first():
    engine = Recorder()
    idle = IdleSleep(engine, IDLE_S, "m")
    idle.start()
    await asyncio.sleep(IDLE_S / 2)
    assert engine.calls == [], "not before the idle time"
    await asyncio.sleep(IDLE_S)
    assert engine.calls == ["sleep 1"] and idle.asleep

    assert await request(idle, engine)
    assert engine.calls == ["sleep 1", "wake"] and not idle.asleep
    await asyncio.sleep(IDLE_S * 2)
    assert engine.calls == ["sleep 1", "wake", "sleep 1"], "asleep again after the next idle time"
    idle.close()


async def test_no_sleep_while_a_request_runs_past_the_idle_time():
    engine = Recorder()
    idle = IdleSleep(engine, IDLE_S, "m")
    running = asyncio.create_task(request(idle, engine, seconds=IDLE_S * 3))
    await asyncio.sleep(IDLE_S * 2)
    assert not running.done(), "the request is still running"
    assert engine.calls == []
    assert await running, "the engine stayed awake under it"
    await asyncio.sleep(IDLE_S / 4)
    assert engine.calls == [], "the idle time counts from the request's end"
    await asyncio.sleep(IDLE_S)
    assert engine.calls == ["sleep 1"]
    idle.close()


async def test_requests_arriving_while_asleep_wake_the_engine_once():
    engine = Recorder()
    idle = IdleSleep(engine, IDLE_S, "m")
    idle.start()
    await asyncio.sleep(IDLE_S * 1.5)
    assert idle.asleep

    assert all(await asyncio.gather(*(request(idle, engine, 0.01) for _ in range(20))))
    assert engine.calls == ["sleep 1", "wake"] and idle.wakes == 1
    idle.close()


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"engine": "transformers"}, "needs engine auto or vllm"),
        ({"capability": "text-embedding", "engine": "auto"}, "needs engine auto or vllm"),
        ({"pool": "small"}, "a pool unloads idle models itself"),
    ],
)
def test_the_catalog_refuses_sleep_where_vllm_does_not_run(update: dict[str, str], message: str):
    entry = {"name": "m", "capability": "text-to-text", "repo_id": "o/m", "sleep_after_s": 300, **update}
    with pytest.raises(ValueError, match=message):
        ModelSpec.model_validate(entry)


def test_a_vllm_entry_may_sleep():
    entry = {"name": "m", "capability": "text-to-text", "repo_id": "o/m", "engine": "vllm", "sleep_after_s": 300}
    assert ModelSpec.model_validate(entry).sleep_after_s == 300
