"""One hub download per cluster, on simulated multi-node clusters with a cache folder per node."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from candle.demo.hub import Fault, LocalHub, write_random_file
from candle.download import fetch
from candle.download.client import node_downloader
from candle.download.cluster.coordinator import NAME as COORDINATOR
from candle.download.records import RepoProgressRecord
from candle.testing.cluster import NodeSpec, node_hub_cache, simulated_cluster

pytestmark = pytest.mark.cluster

MB = 1024 * 1024
NODES = [NodeSpec("head", num_cpus=2), NodeSpec("a", num_cpus=2), NodeSpec("b", num_cpus=2)]
ENV = {
    "HF_HUB_DISABLE_XET": "1",
    "CANDLE_DOWNLOAD_STALL_TIMEOUT": "2",
    "CANDLE_DOWNLOAD_BACKOFF_BASE": "0.2",
    "CANDLE_DOWNLOAD_TAKEOVER_AFTER": "6",
    "CANDLE_DOWNLOAD_PEER_HOST": "127.0.0.1",  # the simulated nodes share this machine's loopback
    "CANDLE_DOWNLOAD_PEER_BANDWIDTH": str(4 * MB),  # slow enough to kill a peer mid-copy
}


@ray.remote(num_cpus=0)
def fetch_on_node(repo_id: str, concurrent: int) -> list[str]:
    async def run() -> list[str]:
        return [str(p) for p in await asyncio.gather(*(fetch(repo_id) for _ in range(concurrent)))]

    return asyncio.run(run())


def on(node_id: str) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node_id, soft=False)


def make_repo(store: Path, repo_id: str, sizes: dict[str, int]) -> dict[str, Path]:
    folder = store / repo_id
    for seed, (name, size) in enumerate(sizes.items()):
        write_random_file(folder / name, size, seed=seed)
    return {name: folder / name for name in sizes}


def assert_copy(snapshot: str, source: dict[str, Path]) -> None:
    for name, path in source.items():
        assert (Path(snapshot) / name).read_bytes() == path.read_bytes(), name


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHub]:
    with LocalHub(tmp_path_factory.mktemp("store")) as hub:
        yield hub


@pytest.fixture(scope="module")
def cluster(hub: LocalHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, dict[str, str], Path]]:
    caches = tmp_path_factory.mktemp("caches")
    with simulated_cluster(NODES, {**ENV, "HF_ENDPOINT": hub.endpoint}, cache_root=caches) as (sim, ids):
        yield sim, ids, caches


def test_three_nodes_four_fetchers_each_one_hub_transfer_per_file(hub: LocalHub, cluster):
    _, ids, caches = cluster
    source = make_repo(hub.state.root, "multi/model", {f"shard-{i}.safetensors": 4 * MB for i in range(3)})
    results = ray.get(
        [fetch_on_node.options(scheduling_strategy=on(node)).remote("multi/model", 4) for node in ids.values()]
    )

    assert hub.stats.bodies_for("multi/model") == dict.fromkeys(source, 1)
    for name, paths in zip(ids, results, strict=True):
        assert len(set(paths)) == 1
        assert Path(paths[0]).is_relative_to(node_hub_cache(caches, name)), (name, paths[0])
        assert_copy(paths[0], source)


def test_nodes_asking_together_relay_the_blob_while_the_first_downloads_it(hub: LocalHub, cluster):
    _, ids, _ = cluster  # all three nodes: before test_a_peer_dying_mid_copy removes one
    source = make_repo(hub.state.root, "multi/relayed", {"model.safetensors": 8 * MB})
    hub.state.throttles["multi/relayed"] = 4 * MB  # 2 s from the hub: the others ask meanwhile
    try:
        results = ray.get(
            [fetch_on_node.options(scheduling_strategy=on(node)).remote("multi/relayed", 1) for node in ids.values()]
        )
    finally:
        hub.state.throttles.clear()

    assert hub.stats.bodies_for("multi/relayed") == {"model.safetensors": 1}
    for (snapshot,) in results:
        assert_copy(snapshot, source)
    files = [ray.get(node_downloader(n).progress.remote("multi/relayed"))[0].files[0] for n in ids.values()]
    assert sorted(f.source for f in files) == ["hub", "relay", "relay"], "two nodes copied from a node still receiving"
    assert {f.upstream for f in files if f.source == "relay"} <= set(ids.values())


def wait_for_bytes(node_id: str, repo_id: str) -> RepoProgressRecord:
    """The progress of ``repo_id`` on that node once its first bytes have arrived."""
    downloader = node_downloader(node_id)
    while True:
        records = ray.get(downloader.progress.remote(repo_id))
        if records and records[0].bytes_done > 0:
            return records[0]
        time.sleep(0.05)


def test_a_peer_dying_mid_copy_does_not_stop_the_others(hub: LocalHub, cluster):
    sim, ids, caches = cluster
    size = 24 * MB  # 6 s from a peer at 4 MB/s
    source = make_repo(hub.state.root, "multi/dying-peer", {"model.safetensors": size})
    ray.get(fetch_on_node.options(scheduling_strategy=on(ids["a"])).remote("multi/dying-peer", 1))
    # Once from the hub, in as many ranged requests as its size takes (16 MiB ranges).
    assert hub.stats.body_bytes[("multi/dying-peer", "model.safetensors")] == size

    copying = fetch_on_node.options(scheduling_strategy=on(ids["b"])).remote("multi/dying-peer", 1)
    assert wait_for_bytes(ids["b"], "multi/dying-peer").bytes_done < size, "b is copying from a"
    node_a = next(n for n in sim.worker_nodes if n.node_id == ids["a"])
    sim.remove_node(node_a)
    (snapshot,) = ray.get(copying, timeout=120)

    assert_copy(snapshot, source)
    assert Path(snapshot).is_relative_to(node_hub_cache(caches, "b"))
    served = hub.stats.body_bytes[("multi/dying-peer", "model.safetensors")]
    # Both sources contributed: b resumed from the hub where the peer stopped, it did not start over.
    assert size < served < 2 * size


def coordinator_epoch() -> str:
    """The running coordinator's epoch (a new one after a restart), once it answers."""
    for _ in range(600):
        try:
            return ray.get(ray.get_actor(COORDINATOR, namespace="candle").register.remote("probe", []))
        except (ray.exceptions.RayActorError, ValueError):
            time.sleep(0.1)  # restarting
    raise AssertionError("the coordinator never came back")


def test_losing_the_coordinator_loses_no_download(hub: LocalHub, cluster):
    _, ids, _ = cluster
    source = make_repo(hub.state.root, "multi/orphan", {"model.safetensors": 8 * MB})
    # The hub download is held half-way while the coordinator is killed: it dies mid-download.
    hold = hub.state.add_fault(Fault("hold", repo="multi/orphan", at=0.5))
    running = fetch_on_node.options(scheduling_strategy=on(ids["head"])).remote("multi/orphan", 2)
    try:
        assert hold.held.wait(60), "the hub download reached the hold"
        epoch = coordinator_epoch()
        ray.kill(ray.get_actor(COORDINATOR, namespace="candle"), no_restart=False)
        assert not ray.wait([running], timeout=0)[0], "the download was still running"
    finally:
        hold.release()
    (snapshot, _) = ray.get(running, timeout=120)
    assert_copy(snapshot, source)
    assert coordinator_epoch() != epoch, "the coordinator that died was replaced"

    # The restarted coordinator learns who holds what again: b copies from head, not from the hub.
    (copied,) = ray.get(fetch_on_node.options(scheduling_strategy=on(ids["b"])).remote("multi/orphan", 1))
    assert_copy(copied, source)
    assert hub.stats.bodies_for("multi/orphan") == {"model.safetensors": 1}
