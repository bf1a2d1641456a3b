"""Relayed copies, in-process: nodes copy a blob from peers still receiving it, verified, resumable.

Each node here is a real ``ClusterSources`` (its own peer server and cache folder) against the
session's coordinator, the test hub and real transfers (``download_verified``); a node "dies" by
closing its peer server, which cuts the copies it serves, while the coordinator still lists it.
A node whose hub download must die with it runs in a process of its own (``NodeProcess``), which
the test kills.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import ray
from huggingface_hub import constants, hf_hub_url

from candle.demo.hub import LocalHub
from candle.download.cache_layout import RepoCache
from candle.download.config import DownloaderSettings
from candle.download.coordinator import coordinator
from candle.download.hf_internals import tune_transfers
from candle.download.listing import RemoteFile
from candle.download.progress import FileProgress
from candle.download.sourcing import BlobJob, ClusterSources
from candle.download.transfer import download_verified
from tests.conftest import RepoFactory

SIZE = 4 * 1024 * 1024
HUB_RATE = 2 * 1024 * 1024  # bytes/s per hub connection: the first node takes ~2 s, long enough to relay
SETTINGS = DownloaderSettings(stall_timeout=5, backoff_base=0.2, max_attempts=3, relay=True)
CHUNK = 64 * 1024  # as the download actor sets it (tune_transfers): bytes reach disk and progress as they arrive


class RecordingProgress(FileProgress):
    """Progress that also remembers where each attempt started: a resumed copy starts past 0."""

    def __init__(self, path: str, total: int) -> None:
        super().__init__(path, total)
        self.starts: list[int] = []

    def restart(self, done: int) -> None:
        self.starts.append(done)
        super().restart(done)


@dataclass
class Node:
    name: str
    sources: ClusterSources
    cache: RepoCache
    progress: RecordingProgress
    task: asyncio.Task[str] | None = field(default=None)

    def start(self, repo_id: str, f: RemoteFile, hub_url: str) -> asyncio.Task[str]:
        partial = self.cache.partial_path(f)

        async def transfer(url: str, headers: dict[str, str], settings: DownloaderSettings) -> None:
            await asyncio.to_thread(
                download_verified,
                repo_id=repo_id,
                url=url,
                headers=headers,
                f=f,
                cache=self.cache,
                partial=partial,
                progress=self.progress,
                settings=settings,
            )

        key = ("model", repo_id, f.etag)
        self.task = asyncio.ensure_future(
            self.sources.obtain(BlobJob(key, self.cache, f, (hub_url, {}), transfer, partial, self.progress))
        )
        return self.task


@dataclass
class Swarm:
    repo_id: str
    file: RemoteFile
    data: bytes
    hub: LocalHub
    nodes: dict[str, Node]

    @property
    def hub_url(self) -> str:
        return hf_hub_url(self.repo_id, self.file.path, endpoint=self.hub.endpoint)

    def start(self, name: str) -> asyncio.Task[str]:
        return self.nodes[name].start(self.repo_id, self.file, self.hub_url)

    def copy_on(self, name: str) -> bytes:
        return self.nodes[name].cache.blob_path(self.file).read_bytes()


def remote_file(path: str, data: bytes) -> RemoteFile:
    blob_id = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
    return RemoteFile(path, len(data), blob_id, hashlib.sha256(data).hexdigest())


@pytest.fixture
async def swarm(
    ray_cluster, hub: LocalHub, make_repo: RepoFactory, repo_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Swarm]:
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", CHUNK)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", SETTINGS.stall_timeout)
    files = make_repo({"model.safetensors": SIZE})
    data = files["model.safetensors"].read_bytes()
    hub.state.throttles[repo_name] = HUB_RATE
    folder = f"models--{repo_name.replace('/', '--')}"
    nodes = {
        name: Node(
            name,
            ClusterSources(SETTINGS, f"{name}-{uuid.uuid4().hex}", "127.0.0.1"),
            RepoCache(tmp_path / name / folder),
            RecordingProgress("model.safetensors", SIZE),
        )
        for name in "abcd"
    }
    await asyncio.gather(*(node.sources.expose(node.cache.folder.parent) for node in nodes.values()))
    try:
        yield Swarm(repo_name, remote_file("model.safetensors", data), data, hub, nodes)
    finally:
        for node in nodes.values():
            node.sources.close()


@ray.remote(num_cpus=0)
class NodeProcess:
    """A node in a process of its own, killed as a machine dies: its hub download and the copies it
    serves stop at once, and it tells the coordinator nothing."""

    def __init__(self, node_id: str, folder: str, repo_id: str, f: RemoteFile, hub_url: str) -> None:
        tune_transfers(read_timeout_s=SETTINGS.stall_timeout, chunk_size=CHUNK)
        sources = ClusterSources(SETTINGS, node_id, "127.0.0.1")
        self.node = Node(node_id, sources, RepoCache(Path(folder)), RecordingProgress(f.path, f.size))
        self.args = (repo_id, f, hub_url)

    async def obtain(self) -> str:
        await self.node.sources.expose(self.node.cache.folder.parent)
        return await self.node.start(*self.args)

    async def received(self) -> int:
        return self.node.progress.done


async def until_received(node: Node | ray.actor.ActorHandle, n: int) -> None:
    """Wait until ``node`` has ``n`` bytes of the blob (a guard, not a measurement: the hub paces it)."""
    for _ in range(3000):
        done = node.progress.done if isinstance(node, Node) else await node.received.remote()
        if done >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"node {node} never received {n} bytes (has {done})")


async def test_nodes_copy_from_relays_while_the_first_downloads_and_all_copies_are_exact(swarm: Swarm):
    first = swarm.start("a")
    await until_received(swarm.nodes["a"], 1)
    others = [swarm.start(name) for name in "bcd"]

    sources = await asyncio.gather(first, *others)

    assert sources == ["hub", "relay", "relay", "relay"], "b, c and d copied while their source was receiving"
    name_of = {swarm.nodes[name].sources.node_id: name for name in "abcd"}
    upstream_of = {name: name_of[swarm.nodes[name].progress.upstream] for name in "bcd"}
    downstream_of = {up: down for down, up in upstream_of.items()}
    assert len(downstream_of) == 3, f"each uplink carries one copy: {upstream_of}"
    chain = ["a"]
    while chain[-1] in downstream_of:
        chain.append(downstream_of[chain[-1]])
    assert sorted(chain) == list("abcd"), f"one chain from the hub's node through all others: {upstream_of}"
    for name in "abcd":
        assert swarm.copy_on(name) == swarm.data
    assert swarm.hub.stats.bytes_for(swarm.repo_id) == SIZE, "the hub served the blob once"


async def test_a_relay_killed_mid_blob_its_downstream_resumes_from_the_next_source(swarm: Swarm):
    a, b, c = (swarm.nodes[name] for name in "abc")
    swarm.start("a")
    await until_received(a, 256 * 1024)
    swarm.start("b")
    await until_received(b, 256 * 1024)
    swarm.start("c")
    await until_received(c, 512 * 1024)
    assert c.progress.upstream == b.sources.node_id

    b.sources.close()  # b dies: its copy to c is cut, and it answers no more

    assert await c.task in ("relay", "peer")
    assert c.progress.upstream == a.sources.node_id
    assert c.progress.starts[0] == 0 and c.progress.starts[-1] >= 512 * 1024, "resumed from what it had"
    assert swarm.copy_on("c") == swarm.data
    assert await a.task == "hub"
    assert swarm.hub.stats.bytes_for(swarm.repo_id) == SIZE, "no second hub download"
    answer = await coordinator(False, 60).claim.remote(("model", swarm.repo_id, swarm.file.etag), "e")
    assert b.sources.node_id not in answer.peers
    await b.task  # b's own transfer (its process would have died with it) ends too


async def test_a_peer_that_sends_wrong_bytes_is_dropped_and_the_blob_is_right(swarm: Swarm):
    a, b = swarm.nodes["a"], swarm.nodes["b"]
    assert await swarm.start("a") == "hub"
    blob = a.cache.blob_path(swarm.file)
    rotten = bytearray(blob.read_bytes())
    rotten[SIZE // 2] ^= 0xFF
    with blob.open("r+b") as out:  # a's disk rots a byte after it verified the blob: it serves wrong bytes
        out.seek(SIZE // 2)
        out.write(rotten[SIZE // 2 : SIZE // 2 + 1])

    assert await swarm.start("b") == "hub", "b caught the bad copy and fetched from the hub, as the last resort"

    assert swarm.copy_on("b") == swarm.data
    answer = await coordinator(False, 60).claim.remote(("model", swarm.repo_id, swarm.file.etag), "e")
    assert a.sources.node_id not in answer.peers and b.sources.node_id in answer.peers


@pytest.mark.parametrize("comes_back", [False, True], ids=["node-dies", "downloader-restarts"])
async def test_the_downloading_node_killed_mid_blob_one_node_takes_over_the_hub_download(
    swarm: Swarm, comes_back: bool
):
    a, b, c = (swarm.nodes[name] for name in "abc")
    doomed = NodeProcess.remote(a.sources.node_id, str(a.cache.folder), swarm.repo_id, swarm.file, swarm.hub_url)
    downloading = doomed.obtain.remote()
    await until_received(doomed, 256 * 1024)
    swarm.start("b")
    await until_received(b, 256 * 1024)
    swarm.start("c")
    await until_received(c, 256 * 1024)
    assert (b.progress.upstream, c.progress.upstream) == (a.sources.node_id, b.sources.node_id)

    ray.kill(doomed, no_restart=True)  # a's hub download and its copy to b end with its process
    if comes_back:
        swarm.start("a")  # a's next downloader (same node, same cache) asks again

    alive = [a, b, c] if comes_back else [b, c]
    sources = await asyncio.gather(*(node.task for node in alive))
    assert sources.count("hub") == 1, f"exactly one node took over the hub download: {sources}"
    for node in alive:
        assert swarm.copy_on(node.name) == swarm.data
    assert b.progress.starts[-1] >= 256 * 1024, "b resumed from what it had"
    if comes_back:
        assert a.progress.starts[0] >= 256 * 1024, "a's next downloader resumed what the dead one left"
    assert swarm.hub.stats.bytes_for(swarm.repo_id) < 2 * SIZE, "the rest of the blob came from the hub once"
    with pytest.raises(ray.exceptions.RayActorError):
        await downloading


async def test_a_restarted_downloader_tells_the_coordinator_what_its_node_holds(swarm: Swarm):
    """A restarted downloader serves its node's blobs at a new URL: its first fetch of the repo (all
    cached, so it claims nothing) announces them, and other nodes copy from it, not from the hub."""
    a, b = swarm.nodes["a"], swarm.nodes["b"]
    assert await swarm.start("a") == "hub"
    a.sources.close()  # a's downloader dies; its successor on the same node serves the same cache
    a.sources = ClusterSources(SETTINGS, a.sources.node_id, "127.0.0.1")

    announced = a.sources.expose(a.cache.folder.parent)  # what its first fetch of the repo does
    assert announced is not None
    await announced

    assert await swarm.start("b") == "peer"
    assert b.progress.upstream == a.sources.node_id
    assert swarm.copy_on("b") == swarm.data
    assert swarm.hub.stats.bytes_for(swarm.repo_id) == SIZE, "the hub served the blob once"
