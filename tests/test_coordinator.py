"""The download coordinator's decisions, in-process (the Ray actor runs this same class)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from candle.download.coordinator import Claim, DownloadCoordinator

KEY = ("model", "org/name", "a" * 64)
URL = "http://a/blobs/x/models--org--name/" + "a" * 64


async def test_a_wait_begun_after_the_download_finished_returns_at_once():
    coordinator = DownloadCoordinator()
    assert (await coordinator.claim(KEY, "a")).action == "hub"
    answer = await coordinator.claim(KEY, "b")
    assert answer.action == "wait"
    await coordinator.done(KEY, "a", URL)  # settles between b's claim and b's wait

    # b sleeps for the whole time-out if its wait misses the change that already happened.
    await asyncio.wait_for(coordinator.wait(KEY, answer.version, 3600), timeout=5)
    assert (await coordinator.claim(KEY, "b")).action == "peer"


async def test_a_wait_returns_when_the_download_it_waits_for_ends():
    coordinator = DownloadCoordinator()
    await coordinator.claim(KEY, "a")
    answer = await coordinator.claim(KEY, "b")
    waiting = asyncio.ensure_future(coordinator.wait(KEY, answer.version, 3600))
    await asyncio.sleep(0)
    assert not waiting.done()
    await coordinator.failed(KEY, "a")
    await asyncio.wait_for(waiting, timeout=5)
    assert (await coordinator.claim(KEY, "b")).action == "hub"


async def test_a_shared_answer_names_the_holders_a_node_forgets_when_the_blob_is_gone():
    coordinator = DownloadCoordinator(shared_cache=True)
    await coordinator.claim(KEY, "a")
    await coordinator.done(KEY, "a", URL)
    answer = await coordinator.claim(KEY, "b")
    assert answer.action == "shared" and answer.holders == ("a",)

    await coordinator.forget(KEY, "a")  # b found no blob in the shared cache
    assert (await coordinator.claim(KEY, "b")).action == "hub"
    assert replace(await coordinator.claim(KEY, "c"), epoch="", version=0) == Claim("wait", node="b")


async def test_a_restarted_coordinator_hands_out_no_download_until_running_ones_reclaim():
    coordinator = DownloadCoordinator(takeover_after_s=6, restarted=True)
    # a was downloading under the coordinator that died; b asks before a's next keep-alive.
    assert (await coordinator.claim(KEY, "b")).action == "wait"
    await coordinator.progress(KEY, "a")
    assert (await coordinator.claim(KEY, "b")).node == "a"
    await coordinator.done(KEY, "a", URL)
    assert (await coordinator.claim(KEY, "b")).action == "peer"


async def test_a_coordinator_made_in_a_driver_of_a_running_cluster_hands_out_downloads(ray_cluster):
    """Only a restarted actor holds back downloads: asking Ray that from a driver used to raise."""
    assert (await DownloadCoordinator().claim(KEY, "a")).action == "hub"
