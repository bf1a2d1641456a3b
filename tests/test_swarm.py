"""Relayed copies, in-process: nodes copy a blob from peers still receiving it, verified, resumable.

Each node here is a real ``ClusterSources`` (its own peer server and cache folder) against the
session's coordinator, the test hub and real transfers (``download_verified``); a node "dies" by
closing its peer server, which cuts the copies it serves, while the coordinator still lists it.
A node whose hub download must die with it runs in a process of its own (``NodeProcess``), which
the test kills.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import ray
from huggingface_hub import hf_hub_url

from candle.demo.hub import Fault, LocalHub
from candle.download.cluster.coordinator import coordinator
from candle.download.cluster.sourcing import BlobJob, ClusterSources
from candle.download.config import DownloaderSettings
from candle.download.node.cache_layout import RepoCache
from candle.download.node.listing import RemoteFile
from candle.download.node.partial_file import PartialFile
from candle.download.node.progress import FileProgress
from candle.download.node.ranges import Drop, Links, Source
from candle.download.node.transfer import download_verified
from candle.testing import free_port
from tests.conftest import RepoFactory
from tests.silent_peer import Silent
from tests.small_disk import tmpfs

MB = 1024 * 1024
SIZE = 4 * MB
HUB_RATE = 2 * 1024 * 1024  # bytes/s per hub connection: the first node takes ~2 s, long enough to relay
# Writes of 64 KiB: bytes reach disk and progress as they arrive. A peer that answers within 5 s is kept:
# on two shared cores a live peer's answer can take longer than the default second.
SETTINGS = DownloaderSettings(
    stall_timeout=5, peer_timeout=5, backoff_base=0.2, max_attempts=3, relay=True, chunk_size=64 * 1024
)


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
        settings = self.sources.settings
        partial = PartialFile(self.cache.partial_path(f), f, pieces=f.size > settings.range_size)
        links = Links(settings, local_address=None)

        async def transfer(
            sources: Sequence[Source], settings: DownloaderSettings, dropped: dict[str, Drop]
        ) -> set[str]:
            return await asyncio.to_thread(
                download_verified,
                repo_id=repo_id,
                sources=sources,
                cache=self.cache,
                partial=partial,
                progress=self.progress,
                settings=settings,
                links=links,
                dropped=dropped,
            )

        key = ("model", repo_id, f.etag)
        self.task = asyncio.ensure_future(
            self.sources.obtain(BlobJob(key, self.cache, f, Source(hub_url), transfer, partial, self.progress))
        )
        self.task.add_done_callback(lambda _: links.close())
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

    @property
    def key(self) -> tuple[str, str, str]:
        return ("model", self.repo_id, self.file.etag)

    async def offered(self) -> set[str]:
        """Every node the coordinator would send a new node to (asking until it offers no other)."""
        actor, node, excluded, found = coordinator(False, 60), f"e-{uuid.uuid4().hex}", [], set()
        while (answer := await actor.claim.remote(self.key, node, tuple(excluded))).action == "peer":
            ((peer, url),) = answer.peers.items()
            found.add(peer)
            excluded.append(url)
        await actor.failed.remote(self.key, node)  # the last claim may have made it the hub downloader
        return found


def remote_file(path: str, data: bytes) -> RemoteFile:
    blob_id = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
    return RemoteFile(path, len(data), blob_id, hashlib.sha256(data).hexdigest())


@pytest.fixture
async def swarm(
    ray_cluster, hub: LocalHub, make_repo: RepoFactory, repo_name: str, tmp_path: Path
) -> AsyncIterator[Swarm]:
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


@dataclass
class Impostor:
    """A holder the coordinator sends nodes to that is really a second test hub on the same files:
    it serves the blob at a URL of its own, with faults of its own."""

    node: str
    hub: LocalHub


@pytest.fixture
async def impostor(swarm: Swarm) -> AsyncIterator[Impostor]:
    with LocalHub(swarm.hub.state.root) as other:
        url = hf_hub_url(swarm.repo_id, swarm.file.path, endpoint=other.endpoint)
        node = f"impostor-{uuid.uuid4().hex}"
        await coordinator(False, 60).register.remote(node, [(swarm.key, url)])
        yield Impostor(node, other)


@ray.remote(num_cpus=0)
class NodeProcess:
    """A node in a process of its own, killed as a machine dies: its hub download and the copies it
    serves stop at once, and it tells the coordinator nothing."""

    def __init__(self, node_id: str, folder: str, repo_id: str, f: RemoteFile, hub_url: str) -> None:
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
    # The hub holds a's download half-way until every other node has that half: copied while it arrives.
    hold = swarm.hub.state.add_fault(Fault("hold", path=swarm.file.path, at=0.5))
    first = swarm.start("a")
    assert await asyncio.to_thread(hold.held.wait, 30), "a's hub download reached the hold"
    others = [swarm.start(name) for name in "bcd"]
    try:
        for name in "bcd":
            await until_received(swarm.nodes[name], SIZE // 2)
        assert swarm.nodes["a"].progress.done == SIZE // 2 and not first.done(), "a still downloads"
    finally:
        hold.release()

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


@pytest.mark.parametrize("disk", ["roomy", "small"])
async def test_a_peer_sending_more_than_the_blob_is_cut_off_and_blamed(
    swarm: Swarm, impostor: Impostor, tmp_path: Path, disk: str
):
    """64 MiB past a 4 MiB blob: the node writes none of it (on a small disk, a full disk would be
    taken as the node's own fault and fail its fetch), and no node is sent to that peer again."""
    b = swarm.nodes["b"]
    impostor.hub.state.add_fault(Fault("overflow", extra=64 * MB, times=None))
    with tmpfs(tmp_path / "small", size_mb=8) if disk == "small" else contextlib.nullcontext(True) as mounted:
        if not mounted:
            pytest.skip("a disk that fills up needs a small tmpfs: mounting one needs root (CAP_SYS_ADMIN)")
        if disk == "small":
            b.cache = RepoCache(tmp_path / "small" / b.cache.folder.name)
            await b.sources.expose(b.cache.folder.parent)
        assert await swarm.start("b") == "hub"
        assert swarm.copy_on("b") == swarm.data
    assert impostor.node not in await swarm.offered()
    assert impostor.hub.stats.faults == {(swarm.repo_id, swarm.file.path, "overflow"): 1}


@pytest.mark.parametrize("resumed_from", ["holder", "hub"])
async def test_wrong_bytes_from_one_source_are_blamed_on_it_not_on_the_one_resumed_from(
    swarm: Swarm, impostor: Impostor, resumed_from: str
):
    """b copies from a peer that sends a wrong byte, hangs up and then answers 503 (busy, so not
    forgotten for that), and resumes from the next source: a holder (c), or the hub when there is
    none. The whole blob fails its checksum: the peer that sent the wrong byte is to blame, never
    the source b resumed from, and b needs no byte from the hub to find out which it was."""
    b, c = swarm.nodes["b"], swarm.nodes["c"]
    if resumed_from == "holder":
        assert await swarm.start("c") == "peer"  # from the impostor, honest so far: c holds a good copy
    for fault in (Fault("corrupt", at=0.25), Fault("drop", at=0.5), Fault("503", skip=1, times=None)):
        impostor.hub.state.add_fault(fault)

    source = await swarm.start("b")

    fired = impostor.hub.stats.faults
    assert (
        fired[(swarm.repo_id, swarm.file.path, "corrupt")] == 1 and fired[(swarm.repo_id, swarm.file.path, "drop")] == 1
    )
    # The impostor dropped at half the blob: b resumed from the next source (its second half), then,
    # the mix failing its checksum, fetched it whole from that source to judge the impostor's bytes.
    resumed = c.sources.server.sent if resumed_from == "holder" else swarm.hub.stats.bytes_for(swarm.repo_id)
    assert resumed == SIZE // 2 + SIZE, "b resumed, then fetched it whole"
    assert b.progress.starts[-1] == 0
    assert swarm.copy_on("b") == swarm.data
    offered = await swarm.offered()
    if resumed_from == "holder":
        assert c.sources.node_id in offered, "c, which sent only right bytes, is still a source"
        assert (source, b.progress.upstream) == ("peer", c.sources.node_id), "b's whole copy came from c"
        assert swarm.hub.stats.bytes_for(swarm.repo_id) == 0, "no byte from the hub"
    else:
        assert source == "hub"
    assert impostor.node not in offered, "the peer that sent the wrong byte is forgotten"


@pytest.mark.parametrize("dead", ["refuses", "silent"])
@pytest.mark.parametrize("want", [1, 8], ids=["one", "both"])  # holders a claim may give: ranges from one, or both
async def test_a_dead_peer_is_dropped_for_another_peer_not_the_hub(swarm: Swarm, dead: str, want: int):
    """Two holders, the first one dead: b drops it at its first failure (within the peer time-out,
    without retries), and copies from the other, whether one holder at a time or ranges from both
    at once. The hub sends nothing: another peer had the bytes. The dead one is forgotten."""
    b = swarm.nodes["b"]
    settings = replace(SETTINGS, peer_timeout=1.0, connections_per_file=want, range_size=512 * 1024)
    b.sources.close()
    b.sources = ClusterSources(settings, b.sources.node_id, "127.0.0.1")
    await b.sources.expose(b.cache.folder.parent)
    silent = Silent()
    gone = f"http://127.0.0.1:{free_port()}" if dead == "refuses" else silent.url.removesuffix("/blob")
    connections = min(want, SIZE // settings.range_size)
    dead_node, live_node = f"dead-{uuid.uuid4().hex}", f"live-{uuid.uuid4().hex}"
    actor = coordinator(False, 60)
    blob_path = f"/blobs/{'0' * 16}/models--{swarm.repo_id.replace('/', '--')}/{swarm.file.etag}"
    await actor.register.remote(dead_node, [(swarm.key, gone + blob_path)])  # first: offered first
    try:
        with LocalHub(swarm.hub.state.root) as live:
            url = hf_hub_url(swarm.repo_id, swarm.file.path, endpoint=live.endpoint)
            await actor.register.remote(live_node, [(swarm.key, url)])

            assert await swarm.start("b") == "peer"

            assert live.stats.bytes_for(swarm.repo_id) == SIZE
    finally:
        silent.close()
    assert swarm.copy_on("b") == swarm.data
    assert swarm.hub.stats.bytes_for(swarm.repo_id) == 0, "no hub body: a peer had the bytes"
    if dead == "silent":
        # Its share of the connections tried it once each (the first holder gets every other one), and
        # one check whether it answers at all: no retries.
        assert len(silent.accepted) <= (connections + 1) // 2 + 1
    offered = await swarm.offered()
    assert dead_node not in offered and live_node in offered
