"""An engine that sleeps while idle and wakes for the next request: vLLM's sleep mode, driven by traffic.

Scaling an LLM to zero costs a new process on the next request (tens of seconds to minutes: import,
load, CUDA graphs), so large models keep a replica and its GPU memory however idle they are. vLLM's
sleep mode frees that memory without ending the process: level 1 moves the weights to host memory
and drops the KV cache, and waking copies them back (0.1-6 s from 0.6B to 235B parameters by vLLM's
own measurements), keeping what a new process would rebuild. ``IdleSleep`` puts the engine to sleep
once ``after_s`` passed with no request in flight and wakes it before the next one is let through,
so no request ever meets a sleeping engine, and sleep never aborts a request (vLLM's ``sleep``
aborts whatever is running).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Protocol

logger = logging.getLogger(__name__)


class Sleeper(Protocol):
    """What vLLM's ``AsyncLLM`` offers for sleep mode (engine started with ``enable_sleep_mode``)."""

    async def sleep(self, level: int = 1) -> None: ...

    async def wake_up(self, tags: list[str] | None = None) -> bool: ...


class IdleSleep:
    """Sleep ``engine`` after ``after_s`` without requests; wake it before the next request runs."""

    def __init__(self, engine: Sleeper, after_s: float, name: str, level: int = 1) -> None:
        self.engine = engine
        self.after_s = after_s
        self.name = name
        self.level = level
        self.asleep = False
        self.wakes = 0  # how often a request woke the engine
        self._active = 0
        self._last = time.monotonic()
        self._lock = asyncio.Lock()  # sleeping and waking never overlap, nor a request's start with either
        self._watcher: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def awake(self) -> AsyncIterator[None]:
        """Hold the engine awake for one request (waking it first if it sleeps)."""
        async with self._lock:
            if self.asleep:
                started = time.monotonic()
                await self.engine.wake_up()
                self.asleep = False
                self.wakes += 1
                logger.info("%s: woke from sleep in %.2fs", self.name, time.monotonic() - started)
            self._active += 1
        self.start()
        try:
            yield
        finally:
            self._active -= 1
            self._last = time.monotonic()

    def start(self) -> None:
        """Watch for idle time on the running loop (again, after a wake); the replica starts it once loaded."""
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        """Until the engine sleeps: wait out the idle time since the last request, then sleep it."""
        while True:
            await asyncio.sleep(max(self._last + self.after_s - time.monotonic(), 0.05))
            async with self._lock:
                if self._active or time.monotonic() - self._last < self.after_s:
                    continue
                await self.engine.sleep(self.level)
                self.asleep = True
                logger.info("%s: asleep after %.0fs without requests (level %d)", self.name, self.after_s, self.level)
                return

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
