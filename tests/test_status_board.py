"""The gateway's status board: collected every refresh while a model is on its way or someone reads
it, rarely when all is steady and unread, and never trusted as "ready" once stale."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import pytest

from candle.api.models import ModelStatus
from deployments.status_board import StatusBoard

REFRESH_S, QUIET_S = 0.05, 30.0


class Cluster:
    """What the board collects from: a state per model that a test changes, and a count of
    collections (a failing one raises, as ``serve.status()`` does when the controller is gone)."""

    def __init__(self, **states: str) -> None:
        self.states = states
        self.collections = 0
        self.published: list[dict[str, ModelStatus]] = []
        self.fail = False

    async def collect(self) -> dict[str, ModelStatus]:
        self.collections += 1
        if self.fail:
            raise ConnectionError("controller gone")
        return {name: ModelStatus(state) for name, state in self.states.items()}


@contextlib.asynccontextmanager
async def running(cluster: Cluster) -> AsyncIterator[StatusBoard]:
    board = StatusBoard(cluster.collect, cluster.published.append, refresh_s=REFRESH_S, quiet_s=QUIET_S)
    task = asyncio.create_task(board.run())
    try:
        await until(lambda: cluster.collections >= 1)
        yield board
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_steady_unread_board_collects_rarely() -> None:
    cluster = Cluster(a="ready", b="idle")
    async with running(cluster):
        await asyncio.sleep(20 * REFRESH_S)
        assert cluster.collections == 1  # every refresh would have made about 20
        assert cluster.published == [{"a": ModelStatus("ready"), "b": ModelStatus("idle")}]


@pytest.mark.parametrize("state", ["downloading", "loading", "pending", "failed", "not_deployed"])
async def test_a_model_on_its_way_is_collected_every_refresh(state: str) -> None:
    cluster = Cluster(a="ready", b=state)
    async with running(cluster):
        await until(lambda: cluster.collections >= 5)  # QUIET_S would take minutes


async def test_a_read_asks_for_a_fresh_collection_and_a_change_is_seen() -> None:
    cluster = Cluster(a="ready")
    async with running(cluster) as board:
        await asyncio.sleep(4 * REFRESH_S)  # settled into the quiet pace
        assert cluster.collections == 1
        cluster.states["a"] = "idle"  # scaled to zero while nobody looked
        assert board.get("a").state == "ready"  # what was last seen, until the collection it asked for
        await until(lambda: board.get("a").state == "idle", timeout_s=QUIET_S / 2)
        assert cluster.collections == 2


async def test_ready_is_trusted_only_while_recent() -> None:
    cluster = Cluster(a="ready")
    async with running(cluster) as board:
        assert board.ready_now("a")
        board.collected_at -= 4 * REFRESH_S  # as if the last collection were older
        assert board.get("a").state == "ready"
        assert not board.ready_now("a")
        await until(lambda: board.ready_now("a"))  # the read asked for one; it makes "ready" trusted again


async def test_before_the_first_collection_a_model_is_starting_up() -> None:
    board = StatusBoard(Cluster(a="ready").collect, lambda statuses: None)
    assert board.get("a") == ModelStatus("loading", "starting up")
    assert not board.ready_now("a")


async def test_a_failed_collection_is_logged_keeps_the_last_view_and_retries(caplog: pytest.LogCaptureFixture) -> None:
    cluster = Cluster(a="ready")
    async with running(cluster) as board:
        cluster.fail = True
        with caplog.at_level(logging.ERROR, logger="ray.serve"):
            board.get("a")
            await until(lambda: cluster.collections >= 2)
            await until(lambda: "refreshing model status failed" in caplog.text)
        assert board.get("a").state == "ready"
        cluster.fail = False
        cluster.states["a"] = "loading"
        await until(lambda: board.get("a").state == "loading")
