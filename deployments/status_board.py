"""The gateway's view of where each model stands, collected as often as someone needs it.

Collecting it (``model_status.collect``) asks Serve for ``serve.status()``, which rebuilds Serve's
config objects and cloudpickles each deployment's request router on every call: done every second,
that was 20-30 ms of CPU a second in each gateway replica of an idle demo (py-spy: 81% of the
gateway's samples), taken from the engines beside it while their models answered at their own URLs.
So the board collects every ``refresh_s`` while it matters, when a model is on its way (downloading,
loading, pending, failed, not deployed) or a request read the board since the last collection, and
every ``quiet_s`` when every model is ready or scaled to zero and nobody asked. A status older than
``3 * refresh_s`` is not trusted as "ready": a request that finds it so is bounded as for a model
starting, and the collection its read asked for ends that wait at once where the model is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from candle.api.models import ModelStatus

logger = logging.getLogger("ray.serve")

STEADY_STATES = ("ready", "idle")  # nothing changes on its own until a request comes


class StatusBoard:
    def __init__(
        self,
        collect: Callable[[], Awaitable[dict[str, ModelStatus]]],
        publish: Callable[[dict[str, ModelStatus]], None],
        refresh_s: float = 1.0,
        quiet_s: float = 10.0,
    ) -> None:
        self._collect, self._publish = collect, publish
        self.refresh_s, self.quiet_s = refresh_s, quiet_s
        self.statuses: dict[str, ModelStatus] = {}
        self.collected_at = float("-inf")  # time.monotonic() of the last collection that succeeded
        self._wanted = asyncio.Event()

    def get(self, name: str) -> ModelStatus:
        """The last collected status (before the first, the model is starting up); reading it asks for
        a fresh one by the next ``refresh_s``."""
        self._wanted.set()
        return self.statuses.get(name, ModelStatus("loading", "starting up"))

    def ready_now(self, name: str) -> bool:
        """Whether ``name`` was ready at a collection recent enough to act on without a bound."""
        return self.get(name).state == "ready" and time.monotonic() - self.collected_at <= 3 * self.refresh_s

    def _steady(self) -> bool:
        return bool(self.statuses) and all(s.state in STEADY_STATES for s in self.statuses.values())

    async def run(self) -> None:
        """Collect and publish, forever, at the pace the module's docstring gives."""
        while True:
            self._wanted.clear()
            try:
                self.statuses = await self._collect()
                self.collected_at = time.monotonic()
                self._publish(self.statuses)
            except Exception:
                logger.exception("refreshing model status failed")
            await asyncio.sleep(self.refresh_s)
            if self._steady():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wanted.wait(), self.quiet_s - self.refresh_s)
