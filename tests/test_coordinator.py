"""The download coordinator's decisions, in-process (the Ray actor runs this same class)."""

from __future__ import annotations

import asyncio

from candle.download.coordinator import DownloadCoordinator

KEY = ("model", "org/name", "a" * 64)
URL = "http://a/blobs/x/models--org--name/" + "a" * 64


async def test_a_wait_begun_after_the_download_finished_returns_at_once():
    coordinator = DownloadCoordinator()
    assert (await coordinator.claim(KEY, "a"))["action"] == "hub"
    answer = await coordinator.claim(KEY, "b")
    assert answer["action"] == "wait"
    await coordinator.done(KEY, "a", URL)  # settles between b's claim and b's wait

    # b sleeps for the whole time-out if its wait misses the change that already happened.
    await asyncio.wait_for(coordinator.wait(KEY, answer["version"], 3600), timeout=5)
    assert (await coordinator.claim(KEY, "b"))["action"] == "peer"


async def test_a_wait_returns_when_the_download_it_waits_for_ends():
    coordinator = DownloadCoordinator()
    await coordinator.claim(KEY, "a")
    answer = await coordinator.claim(KEY, "b")
    waiting = asyncio.ensure_future(coordinator.wait(KEY, answer["version"], 3600))
    await asyncio.sleep(0)
    assert not waiting.done()
    await coordinator.failed(KEY, "a")
    await asyncio.wait_for(waiting, timeout=5)
    assert (await coordinator.claim(KEY, "b"))["action"] == "hub"
