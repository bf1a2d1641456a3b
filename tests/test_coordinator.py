"""The download coordinator's decisions, in-process (the Ray actor runs this same class)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from candle.download.cluster.coordinator import Claim, DownloadCoordinator

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


async def test_with_a_shared_cache_nodes_wait_for_the_download_and_never_copy_its_partial_file():
    """In a shared cache every node's partial file is the same file: a relayed copy would write into
    the file it reads. The others wait, then link the blob the first node put there."""
    coordinator = DownloadCoordinator(shared_cache=True)
    assert (await coordinator.claim(KEY, "a", relay_url=URL)).action == "hub"
    assert (await coordinator.claim(KEY, "b", relay_url="http://b/relay")).action == "wait"
    await coordinator.done(KEY, "a", URL)
    assert (await coordinator.claim(KEY, "b", relay_url="http://b/relay")).action == "shared"


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


def url(node: str) -> str:
    return f"http://{node}/blobs/x/models--org--name/" + "a" * 64


async def source(coordinator: DownloadCoordinator, node: str, exclude: tuple[str, ...] = ()) -> tuple[str, str, bool]:
    """(action, the node it copies from or '', whether that one is still receiving) for a relaying claim."""
    answer = await coordinator.claim(KEY, node, exclude, relay_url=url(node))
    return answer.action, next(iter(answer.peers), ""), answer.relay


async def test_nodes_asking_while_the_hub_download_runs_form_a_chain():
    coordinator = DownloadCoordinator()
    assert await source(coordinator, "a") == ("hub", "", False)
    # Each new node copies from the last one, while it is still receiving: every uplink carries one copy.
    assert await source(coordinator, "b") == ("peer", "a", True)
    assert await source(coordinator, "c") == ("peer", "b", True)
    assert await source(coordinator, "d") == ("peer", "c", True)
    answer = await coordinator.claim(KEY, "b", (), relay_url=url("b"))
    assert answer.peers == {"a": url("a")}, "a node asking again is not counted twice against its source"


async def test_a_node_whose_upstream_died_resumes_from_the_one_before_it():
    coordinator = DownloadCoordinator()
    for node in "abc":
        await source(coordinator, node)
    await coordinator.forget(KEY, "b", url("b"))  # b died mid-blob; c could not reach it
    assert await source(coordinator, "c", exclude=(url("b"),)) == ("peer", "a", True)
    assert await source(coordinator, "e") == ("peer", "c", True), "the chain goes on from its new end"


async def test_a_dead_downloader_s_hub_download_goes_to_one_node_and_the_others_copy_from_it():
    coordinator = DownloadCoordinator()
    for node in "abc":
        await source(coordinator, node)
    # b's copy from a stalled but a answers: b waits for a, it does not download the blob a second time.
    assert await source(coordinator, "b", exclude=(url("a"),)) == ("wait", "", False)
    version = (await coordinator.claim(KEY, "d")).version

    await coordinator.forget(KEY, "a", url("a"))  # now a is gone: c's upstream, b, found out
    await asyncio.wait_for(coordinator.wait(KEY, version, 3600), timeout=5)  # waiters ask again at once
    assert await source(coordinator, "b", exclude=(url("a"),)) == ("hub", "", False)
    assert await source(coordinator, "c") == ("peer", "b", True)
    assert await source(coordinator, "d") == ("peer", "c", True)


async def test_a_downloader_that_restarted_is_not_forgotten_for_its_predecessor():
    coordinator = DownloadCoordinator()
    await source(coordinator, "a")
    await source(coordinator, "b")
    # a's downloader died and its successor (same node, a new URL) asked before b noticed.
    restarted = "http://a-restarted/blobs/x/models--org--name/" + "a" * 64
    assert (await coordinator.claim(KEY, "a", (), relay_url=restarted)).action == "hub"

    await coordinator.forget(KEY, "a", url("a"))  # b could not reach a's predecessor
    answer = await coordinator.claim(KEY, "b", (url("a"),), relay_url=url("b"))
    assert (answer.action, answer.peers, answer.relay) == ("peer", {"a": restarted}, True)


async def test_a_relay_is_never_given_a_source_that_copies_from_it():
    coordinator = DownloadCoordinator()
    await source(coordinator, "a")
    await source(coordinator, "b")
    await coordinator.failed(KEY, "a")  # a's hub download failed: b's bytes came from a
    assert await source(coordinator, "a") == ("hub", "", False)


async def test_complete_copies_are_spread_over_their_holders():
    coordinator = DownloadCoordinator()
    await coordinator.done(KEY, "a", url("a"))
    await coordinator.done(KEY, "b", url("b"))
    first, second = await source(coordinator, "c"), await source(coordinator, "d")
    assert {first[1], second[1]} == {"a", "b"} and not first[2] and not second[2]
    await coordinator.done(KEY, "c", url("c"))  # c copies no more: its source's uplink is free again
    assert (await source(coordinator, "e"))[1] != second[1], "not the holder still uploading to d"


async def test_a_node_that_can_use_several_connections_gets_several_holders_the_least_busy_first():
    coordinator = DownloadCoordinator()
    for node in "abc":
        await coordinator.done(KEY, node, url(node))
    answer = await coordinator.claim(KEY, "d", (), want=2)
    assert len(answer.peers) == 2 and not answer.relay
    (third,) = set("abc") - set(answer.peers)
    again = await coordinator.claim(KEY, "e", (url(third),), want=3)
    assert len(again.peers) == 2, "the excluded copy is not offered"
    assert (await coordinator.claim(KEY, "f", (), want=1)).peers == {third: url(third)}, "d's and e's holders are busy"
    await coordinator.done(KEY, "d", url("d"))  # d copies no more: both its holders are free of it
    await coordinator.done(KEY, "e", url("e"))
    answer = await coordinator.claim(KEY, "g", (), want=4)
    assert set(answer.peers) == {"a", "b", "d", "e"}, "the four least busy: not f's holder, still uploading"
