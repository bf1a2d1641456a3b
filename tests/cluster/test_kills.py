"""Killing parts of the download service mid-transfer: every waiter's fetch still completes
byte-exact, and no blob a peer held (or was fetching) is downloaded from the hub a second time.

Each test throttles the hub for its repo so the kill lands while bytes are moving, and waits for the
first bytes before it kills (never a sleep): the kill is mid-transfer on every run. While the other
nodes' fetches start (their downloaders may take seconds to start), the hub trickles, so the first
node cannot finish before the kill however slow the machine is.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from candle.demo.hub import LocalHub
from candle.download.client import downloader_name, node_downloader
from candle.download.cluster.coordinator import NAME as COORDINATOR
from candle.testing.cluster import simulated_cluster
from tests.cluster.test_downloads import ENV, MB, NODES, assert_copy, fetch_on_node, make_repo, on, wait_for_bytes

pytestmark = pytest.mark.cluster

SIZE = 16 * MB
HUB_RATE = 4 * MB  # 4 s per blob from the hub
SETUP_RATE = MB // 4  # while the others start: 64 s per blob


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHub]:
    with LocalHub(tmp_path_factory.mktemp("kill-store")) as hub:
        yield hub


@pytest.fixture(scope="module")
def ids(hub: LocalHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    caches = tmp_path_factory.mktemp("kill-caches")
    with simulated_cluster(NODES, {**ENV, "HF_ENDPOINT": hub.endpoint}, cache_root=caches) as (_, ids):
        yield ids


def slow_repo(hub: LocalHub, repo_id: str) -> dict[str, Path]:
    hub.state.throttles[repo_id] = HUB_RATE
    return make_repo(hub.state.root, repo_id, {"model.safetensors": SIZE})


def start(ids: dict[str, str], node: str, repo_id: str, concurrent: int = 1) -> ray.ObjectRef:
    return fetch_on_node.options(scheduling_strategy=on(ids[node])).remote(repo_id, concurrent)


def assert_every_fetch_exact(fetches: list[ray.ObjectRef], source: dict[str, Path]) -> None:
    for snapshot in [path for paths in ray.get(fetches, timeout=180) for path in paths]:
        assert_copy(snapshot, source)


def first_and_waiters(
    hub: LocalHub, ids: dict[str, str], repo_id: str, first: str, others: list[str]
) -> tuple[dict[str, Path], ray.ObjectRef, list[ray.ObjectRef]]:
    """A fetch on ``first`` that is receiving hub bytes, and fetches on ``others`` that have asked too."""
    source = slow_repo(hub, repo_id)
    hub.state.throttles[repo_id] = SETUP_RATE
    first_fetch = start(ids, first, repo_id)
    wait_for_bytes(ids[first], repo_id)
    waiters = [start(ids, node, repo_id) for node in others]
    for node in set(others) - {first}:
        wait_for_progress_entry(ids[node], repo_id)
    hub.state.throttles[repo_id] = HUB_RATE
    return source, first_fetch, waiters


def hub_bytes(hub: LocalHub, repo_id: str) -> int:
    return hub.stats.body_bytes[(repo_id, "model.safetensors")]


def test_killing_the_downloading_node_s_downloader(hub: LocalHub, ids: dict[str, str]):
    source, downloading, waiters = first_and_waiters(hub, ids, "kill/downloader", "a", ["b", "head"])
    ray.kill(ray.get_actor(downloader_name(ids["a"]), namespace="candle"), no_restart=True)

    assert_every_fetch_exact([downloading, *waiters], source)
    # a's new downloader resumed the hub transfer; b and head copied from a.
    assert SIZE <= hub_bytes(hub, "kill/downloader") < 2 * SIZE


def test_killing_the_coordinator_while_others_wait(hub: LocalHub, ids: dict[str, str]):
    source, downloading, waiters = first_and_waiters(hub, ids, "kill/coordinator", "a", ["b", "head"])
    ray.kill(ray.get_actor(COORDINATOR, namespace="candle"), no_restart=False)

    assert_every_fetch_exact([downloading, *waiters], source)
    assert hub_bytes(hub, "kill/coordinator") == SIZE, "the waiters copied from a, none went to the hub"


def test_killing_a_caller_leaves_the_transfer_to_the_others(hub: LocalHub, ids: dict[str, str]):
    source, doomed, waiters = first_and_waiters(hub, ids, "kill/caller", "b", ["b", "a"])
    ray.cancel(doomed, force=True)  # its worker process is killed, as a replica that dies

    assert_every_fetch_exact(waiters, source)
    assert hub_bytes(hub, "kill/caller") == SIZE, "b's one transfer went on; a copied from b"


def wait_for_progress_entry(node_id: str, repo_id: str) -> None:
    """Until the node's downloader has been asked for ``repo_id`` (its fetch is in flight)."""
    downloader = node_downloader(node_id)
    while not ray.get(downloader.progress.remote(repo_id)):
        time.sleep(0.05)
