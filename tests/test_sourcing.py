"""Which failures of a peer copy make the coordinator forget that peer: only what the peer caused.

A node's ``ClusterSources`` runs in-process here against the session's coordinator and a real peer
server; the transfer callback is where a copy's outcome is decided, so each test gives one that
fails the way the case at hand does (a disk that fills up cannot be made on this machine).
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import ray

from candle.download.cluster.coordinator import BlobKey, coordinator, peer_secret
from candle.download.cluster.peer import PeerServer
from candle.download.cluster.sourcing import BlobJob, ClusterSources
from candle.download.config import DownloaderSettings
from candle.download.errors import DownloadError, IntegrityError, OutOfDisk, TransferFailed
from candle.download.node.cache_layout import RepoCache
from candle.download.node.integrity import verify_published
from candle.download.node.listing import RemoteFile
from candle.download.node.partial_file import PartialFile
from candle.download.node.progress import FileProgress
from candle.download.node.ranges import Drop, Source

DATA = b"verified weights" * 1024
FILE = RemoteFile("model.safetensors", len(DATA), "b" * 40, hashlib.sha256(DATA).hexdigest())
HUB = Source("http://hub.invalid/model.safetensors")


async def obtain(sources: ClusterSources, holder: Holder, cache: RepoCache, transfer) -> str:  # type: ignore[no-untyped-def]
    # These transfers write nothing (a relay would serve no byte): the partial file is never opened.
    partial = PartialFile(Path("/nonexistent/model.incomplete"), FILE)
    return await sources.obtain(
        BlobJob(holder.key, cache, FILE, HUB, transfer, partial, FileProgress(FILE.path, FILE.size))
    )


@dataclass
class Holder:
    """Node 'a': holds the blob, serves it, and is registered with the coordinator as its holder."""

    server: PeerServer
    key: BlobKey
    node: str
    blob: Path


@pytest.fixture
def holder(ray_cluster, tmp_path: Path) -> Iterator[Holder]:
    key = ("model", f"sourcing/{uuid.uuid4().hex[:12]}", FILE.etag)
    blob = tmp_path / "a" / f"models--{key[1].replace('/', '--')}" / "blobs" / FILE.etag
    blob.parent.mkdir(parents=True)
    blob.write_bytes(DATA)
    assert verify_published(blob, RepoCache(blob.parents[1]).record_path(FILE), FILE)  # what a holder advertises
    server = PeerServer("127.0.0.1", peer_secret())
    server.add_root(str(tmp_path / "a"))
    node = "a-" + uuid.uuid4().hex
    ray.get(coordinator(False, 60).register.remote(node, server.holdings()))
    try:
        yield Holder(server, key, node, blob)
    finally:
        server.close()


def copier(holder: Holder, tmp_path: Path) -> tuple[ClusterSources, RepoCache]:
    """Node 'b', which copies the blob; its own cache folder."""
    sources = ClusterSources(DownloaderSettings(), "b-" + uuid.uuid4().hex, "127.0.0.1")
    return sources, RepoCache(tmp_path / "b" / f"models--{holder.key[1].replace('/', '--')}")


async def holders(holder: Holder) -> set[str]:
    """Whom the coordinator sends a third node to."""
    answer = await coordinator(False, 60).claim.remote(holder.key, "c-" + uuid.uuid4().hex)
    return set(answer.peers)


def fetch_or_raise(error: DownloadError | None):
    """A transfer that reads from the URL it is given (peer or hub) and then fails with ``error``."""
    urls: list[str] = []

    async def transfer(sources: Sequence[Source], _: DownloaderSettings, dropped: dict[str, Drop]) -> set[str]:
        ((url, headers),) = ((s.url, s.headers) for s in sources)
        urls.append(url)
        if url == HUB.url:
            return set()
        try:
            response = httpx.get(url, headers=headers)
        except httpx.TransportError as e:
            raise TransferFailed("sourcing", FILE.path, type(e).__name__) from None
        if response.status_code != 200:
            raise TransferFailed("sourcing", FILE.path, f"HTTP {response.status_code}")
        if error is not None:
            raise error
        return set()

    return transfer, urls


async def test_a_disk_that_fills_up_while_copying_keeps_the_peer(holder: Holder, tmp_path: Path):
    sources, cache = copier(holder, tmp_path)
    transfer, urls = fetch_or_raise(OutOfDisk("sourcing", FILE.path, "disk filled up during the transfer"))
    try:
        with pytest.raises(OutOfDisk):
            await obtain(sources, holder, cache, transfer)
    finally:
        sources.close()
    assert urls == [urls[0]] and urls[0] != HUB.url, "a full disk is not a reason to try the hub"
    assert holder.node in await holders(holder)


async def test_a_local_error_while_copying_keeps_the_peer(holder: Holder, tmp_path: Path):
    sources, cache = copier(holder, tmp_path)
    transfer, urls = fetch_or_raise(TransferFailed("sourcing", FILE.path, "IsADirectoryError: [Errno 21]"))
    try:
        assert await obtain(sources, holder, cache, transfer) == "hub"
    finally:
        sources.close()
    assert urls == [holder.server.holdings()[0][1], HUB.url], "from the peer first, then from the hub"
    assert holder.node in await holders(holder)


@pytest.mark.parametrize("fault", ["gone", "blob removed", "wrong bytes"])
async def test_a_peer_that_fails_the_copy_is_forgotten(holder: Holder, tmp_path: Path, fault: str):
    sources, cache = copier(holder, tmp_path)
    error = IntegrityError("sourcing", FILE.path, "checksum mismatch") if fault == "wrong bytes" else None
    transfer, _ = fetch_or_raise(error)
    if fault == "gone":
        holder.server.close()
    elif fault == "blob removed":
        holder.blob.unlink()
    try:
        assert await obtain(sources, holder, cache, transfer) == "hub"
    finally:
        sources.close()
    assert holder.node not in await holders(holder)


async def test_a_node_whose_copy_from_the_live_downloader_failed_tries_it_again_not_the_hub(
    holder: Holder, tmp_path: Path
):
    (url,) = (u for _, u in holder.server.holdings())
    actor = coordinator(False, 60)
    await actor.forget.remote(holder.key, holder.node, url)
    assert (await actor.claim.remote(holder.key, holder.node, (), url)).action == "hub"  # a downloads, relaying
    # b waits stall_timeout * 3 for a's download to change before it asks again.
    sources = ClusterSources(DownloaderSettings(stall_timeout=0.5), "b-" + uuid.uuid4().hex, "127.0.0.1")
    cache = RepoCache(tmp_path / "b" / f"models--{holder.key[1].replace('/', '--')}")
    calls: list[str] = []

    async def transfer(sources: Sequence[Source], _: DownloaderSettings, dropped: dict[str, Drop]) -> set[str]:
        calls.extend(s.url for s in sources)
        if len(calls) == 1:
            raise TransferFailed("sourcing", FILE.path, "ReadTimeout after 1 attempts")  # a answers: not to blame
        return set()

    try:
        assert await asyncio.wait_for(obtain(sources, holder, cache, transfer), 30) == "relay"
    finally:
        sources.close()
    assert calls == [url, url], "from a again once it had waited for a, never from the hub"
