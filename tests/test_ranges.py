"""A blob in byte ranges, from one or several sources at once: assembled byte-exact, a bad range blamed
on its source alone, a dropped range resumed where it stopped, and a peer's head waited for briefly.

The sources are real HTTP servers: the test hub, and a second test hub on the same files standing in
for a peer (with faults of its own), driven through ``download_verified`` as the downloader does.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import hf_hub_url

from candle.demo.hub import CHUNK_SIZE, CONNECTION_SLOT_S, Fault, LocalHub
from candle.download.config import DownloaderSettings
from candle.download.downloader import _own_loopback
from candle.download.errors import TransferFailed
from candle.download.node.cache_layout import RepoCache
from candle.download.node.listing import RemoteFile
from candle.download.node.partial_file import Overrun, PartialFile
from candle.download.node.progress import FileProgress
from candle.download.node.ranges import Drop, Links, Source, SourceError, check_range, wait_longer_for_the_body
from candle.download.node.transfer import download_verified
from tests.conftest import RepoFactory
from tests.silent_peer import Silent

KB = 1024
SIZE = 2 * 1024 * KB
RANGE = 256 * KB  # 8 ranges
SETTINGS = DownloaderSettings(range_size=RANGE, connections_per_file=4, chunk_size=64 * KB, backoff_base=0.05)


@dataclass
class Blob:
    repo_id: str
    data: bytes
    file: RemoteFile
    cache: RepoCache
    hub: LocalHub
    other: LocalHub  # a second server of the same files: a peer with faults of its own

    def url(self, server: LocalHub) -> str:
        return hf_hub_url(self.repo_id, self.file.path, endpoint=server.endpoint)

    def partial(self, settings: DownloaderSettings = SETTINGS) -> PartialFile:
        return PartialFile(self.cache.partial_path(self.file), self.file, pieces=self.file.size > settings.range_size)

    def fetch(
        self, sources: list[Source], settings: DownloaderSettings = SETTINGS, partial: PartialFile | None = None
    ) -> tuple[set[str], PartialFile, dict[str, Drop]]:
        partial = partial or self.partial(settings)
        links, dropped = Links(settings), {}
        try:
            blamed = download_verified(
                repo_id=self.repo_id,
                sources=sources,
                cache=self.cache,
                partial=partial,
                progress=FileProgress(self.file.path, self.file.size),
                settings=settings,
                links=links,
                dropped=dropped,
            )
        finally:
            links.close()
        return blamed, partial, dropped

    def published(self) -> bytes:
        return self.cache.blob_path(self.file).read_bytes()


@pytest.fixture
def blob(hub: LocalHub, make_repo: RepoFactory, repo_name: str, tmp_path: Path) -> Iterator[Blob]:
    data = make_repo({"model.safetensors": SIZE})["model.safetensors"].read_bytes()
    git = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
    f = RemoteFile("model.safetensors", len(data), git, hashlib.sha256(data).hexdigest())
    cache = RepoCache(tmp_path / f"models--{repo_name.replace('/', '--')}")
    with LocalHub(hub.state.root) as other:
        yield Blob(repo_name, data, f, cache, hub, other)


def test_ranges_from_two_sources_are_assembled_byte_exact(blob: Blob):
    hub, peer = Source(blob.url(blob.hub)), Source(blob.url(blob.other), kind="peer")

    blamed, partial, dropped = blob.fetch([hub, peer])

    assert blob.published() == blob.data and not blamed and not dropped
    assert {r.source for r in partial.provenance.ranges} == {hub.url, peer.url}, "both sources wrote ranges"
    served = blob.hub.stats.bytes_for(blob.repo_id), blob.other.stats.bytes_for(blob.repo_id)
    assert sum(served) == SIZE and all(served), f"each byte once, from one source or the other: {served}"
    assert (
        blob.hub.stats.bodies_for(blob.repo_id)["model.safetensors"]
        + blob.other.stats.bodies_for(blob.repo_id)["model.safetensors"]
        == SIZE // RANGE
    )
    assert partial.read_back < SIZE, "ranges handed out in order: part of the file was hashed as it arrived"
    assert not list(blob.cache.blobs.glob("*.incomplete*")), "no partial file or record of its ranges left"


def test_under_a_per_connection_cap_ranges_come_over_several_connections_at_once_each_within_it(blob: Blob):
    """The hub caps each connection (as a CDN does): the node's connections to it send ranges at the
    same time, so the file comes faster than one connection may send it, while by the hub's own books
    no connection ever sent more than its cap. Not a timing: a slow machine only sends less per slot."""
    rate = 2 * 1024 * KB
    blob.hub.state.bandwidth = rate

    blamed, _, dropped = blob.fetch([Source(blob.url(blob.hub))])

    assert blob.published() == blob.data and not blamed and not dropped
    slots: dict[int, dict[int, int]] = defaultdict(dict)  # slot -> connection -> bytes sent in it
    for (connection, slot), sent in blob.hub.stats.connection_bytes.items():
        slots[slot][connection] = sent
    connections = {c for by_connection in slots.values() for c in by_connection}
    assert 1 < len(connections) <= SETTINGS.connections_per_file, "several connections, kept alive over ranges"
    assert max(len(by_connection) for by_connection in slots.values()) > 1, "some of them sending at once"
    assert max(max(by_connection.values()) for by_connection in slots.values()) <= (
        rate * CONNECTION_SLOT_S + 2 * CHUNK_SIZE
    ), "each within the cap"


def test_a_corrupt_range_is_blamed_on_its_source_only(blob: Blob):
    """The peer sends one wrong byte in one of its ranges: the blob as a whole fails, its bytes are set
    aside, the hub sends it whole, and exactly the peer is found to have sent wrong bytes."""
    hub, peer = Source(blob.url(blob.hub)), Source(blob.url(blob.other), kind="peer")
    blob.other.state.add_fault(Fault("corrupt", path="model.safetensors", at=0.5, times=1))

    blamed, _, dropped = blob.fetch([hub, peer])

    assert blob.other.stats.faults == {(blob.repo_id, "model.safetensors", "corrupt"): 1}
    assert blamed == {peer.url}, "the peer, not the hub, which sent right bytes"
    assert blob.published() == blob.data and not dropped
    assert blob.hub.stats.bytes_for(blob.repo_id) < 2 * SIZE, "its ranges, then the whole blob once"
    assert not list(blob.cache.blobs.glob("*.suspect")), "the set-aside bytes are removed once judged"


def test_a_range_resumed_after_a_drop_fetches_only_the_rest_of_it(blob: Blob):
    """One source, one connection: the second range's body is cut half-way; the range goes on from the
    byte it stopped at, from the same source (the hub is retried, a peer would be dropped)."""
    blob.hub.state.add_fault(Fault("drop", path="model.safetensors", at=0.5, skip=1, times=1))

    blamed, _, dropped = blob.fetch([Source(blob.url(blob.hub))], replace(SETTINGS, connections_per_file=1))

    assert blob.hub.stats.faults == {(blob.repo_id, "model.safetensors", "drop"): 1}
    assert blob.published() == blob.data and not blamed and not dropped
    assert blob.hub.stats.bodies_for(blob.repo_id)["model.safetensors"] == SIZE // RANGE + 1
    # Restarted from its start, the range would cost half a range more; resumed, at most one write's worth.
    assert blob.hub.stats.bytes_for(blob.repo_id) <= SIZE + SETTINGS.chunk_size


def test_a_peer_cut_off_mid_range_is_dropped_and_its_ranges_go_to_the_other_source(blob: Blob):
    hub, peer = Source(blob.url(blob.hub)), Source(blob.url(blob.other), kind="peer")
    blob.other.state.add_fault(Fault("drop", path="model.safetensors", at=0.5, times=1))

    blamed, _partial, dropped = blob.fetch([hub, peer], replace(SETTINGS, connections_per_file=2))

    assert blob.published() == blob.data and not blamed
    assert set(dropped) == {peer.url} and not dropped[peer.url].wrong
    assert blob.other.stats.bodies_for(blob.repo_id)["model.safetensors"] == 1, "no second try of the peer"
    assert blob.hub.stats.bytes_for(blob.repo_id) + blob.other.stats.bytes_for(blob.repo_id) <= SIZE + RANGE


def test_the_next_transfer_resumes_every_range_where_a_dead_peer_stopped(blob: Blob):
    """The only peer is cut off mid-range while its other connection is mid-range too: the transfer fails
    (the caller goes to the next source), and the next one, from the hub, fetches exactly the bytes
    the peer did not write, not the unfinished ranges whole."""
    peer = Source(blob.url(blob.other), kind="peer")
    blob.other.state.add_fault(Fault("drop", path="model.safetensors", at=0.5, times=1))
    partial = blob.partial()

    with pytest.raises(TransferFailed):
        blob.fetch([peer], replace(SETTINGS, connections_per_file=2), partial)
    from_peer = partial.done()
    assert 0 < from_peer < SIZE
    assert any(start % RANGE for start, _ in partial.missing()), "a range cut inside, not at a boundary"

    blamed, _, dropped = blob.fetch([Source(blob.url(blob.hub))], partial=partial)

    assert blob.published() == blob.data and not blamed and not dropped
    assert blob.hub.stats.bytes_for(blob.repo_id) == SIZE - from_peer


def test_the_node_download_cap_is_shared_by_a_files_connections(blob: Blob, monkeypatch: pytest.MonkeyPatch):
    """Every chunk of every connection draws from the node's one download budget before it is written."""
    taken: list[int] = []
    settings = replace(SETTINGS, bandwidth=1e12)
    monkeypatch.setattr("candle.download.node.pacing.TokenBucket.take", lambda self, n: taken.append(n))
    blob.fetch([Source(blob.url(blob.hub)), Source(blob.url(blob.other), kind="peer")], settings)
    assert sum(taken) == SIZE


def test_a_peer_that_never_answers_is_dropped_after_the_peer_timeout_without_a_retry(blob: Blob):
    silent = Silent()
    try:
        sources = [Source(silent.url, kind="peer"), Source(blob.url(blob.other), kind="peer")]
        blamed, _, dropped = blob.fetch(sources, replace(SETTINGS, connections_per_file=2))  # one each
    finally:
        silent.close()
    assert blob.published() == blob.data and not blamed
    assert set(dropped) == {silent.url} and dropped[silent.url].cause == "ReadTimeout"
    assert len(silent.accepted) == 1, "one connection, not huggingface_hub's five retries"


def test_a_peers_body_may_pause_longer_than_its_head_may_take(blob: Blob):
    """httpx reads a request's time-outs when it starts reading the body: set between the head and the
    body, the longer one applies to the body only (``wait_longer_for_the_body`` relies on it)."""
    blob.other.state.add_fault(Fault("hold", path="model.safetensors", at=0.5))
    url = blob.url(blob.other)
    with httpx2.Client() as client, client.stream("GET", url, timeout=httpx2.Timeout(0.5)) as response:
        wait_longer_for_the_body(response, 30)
        chunks = response.iter_bytes()
        received = bytearray(next(chunks))
        while len(received) < SIZE // 2:
            received += next(chunks)
        hold = blob.other.state.faults[0]
        assert hold.held.wait(30)
        time.sleep(1.0)  # twice the head's time-out, paused mid-body: still waited for
        hold.release()
        for chunk in chunks:
            received += chunk
    assert bytes(received) == blob.data
    with pytest.raises(httpx2.ReadTimeout), httpx2.Client() as client:  # without it, the same pause times out
        hold = blob.other.state.add_fault(Fault("hold", path="model.safetensors", at=0.5))
        try:
            with client.stream("GET", url, timeout=httpx2.Timeout(0.5)) as response:
                for _ in response.iter_bytes():
                    pass
        finally:
            hold.release()


@pytest.mark.parametrize(
    ("status", "headers", "refused"),
    [
        (206, {"Content-Range": "bytes 100-199/1000", "Content-Length": "100"}, None),
        (200, {"Content-Length": "1000"}, "ignores Range"),  # the whole file, for a range from byte 100
        (206, {"Content-Range": "bytes 0-99/1000"}, "to a range from byte 100"),  # another range
        (206, {"Content-Range": "bytes 100-199/2000"}, "its file has 2,000 bytes"),  # another file
        (206, {"Content-Range": "bytes 100-299/1000"}, Overrun),  # past the range asked for
        (206, {"Content-Range": "bytes 100-199/1000", "Content-Length": "900"}, Overrun),
        (206, {"Content-Range": "bytes 100-149/1000"}, "ends at byte 150"),  # short of it
        (206, {}, "None"),  # no Content-Range at all
        (416, {}, "HTTP 416"),
    ],
)
def test_an_answer_other_than_the_range_asked_for_is_refused_before_its_body(
    status: int, headers: dict[str, str], refused: type[Exception] | str | None
):
    """Bytes [100, 200) of a 1,000-byte file are asked for: anything else is refused at the header, so a
    wrong source writes nothing (and one announcing more than the range is cut off as an overrun)."""
    response = httpx2.Response(status, headers=headers)
    if refused is None:
        check_range(response, 100, 200, 1000)
        return
    expected = refused if isinstance(refused, type) else SourceError
    with pytest.raises(expected) as raised:
        check_range(response, 100, 200, 1000)
    if isinstance(refused, str):
        assert refused in str(raised.value)
    assert getattr(raised.value, "wrong", False) == (status == 206 and "2000" in headers.get("Content-Range", ""))


def test_peers_are_reached_from_the_nodes_own_loopback_address():
    """Nodes simulated on one machine each serve at a loopback address of their own (127.x.y.z) and
    connect to peers from it, so that a peer's slots per client address (16) count them apart."""
    assert _own_loopback("127.0.1.7") == "127.0.1.7"
    assert _own_loopback("10.0.0.7") is None and _own_loopback("node-7") is None and _own_loopback(None) is None
    silent = Silent()
    links = Links(replace(SETTINGS, peer_timeout=0.2), local_address="127.0.1.7")
    try:
        with pytest.raises(httpx2.ReadTimeout):
            links.peers.get(silent.url, timeout=0.2)
        assert [c.getpeername()[0] for c in silent.accepted] == ["127.0.1.7"]
    finally:
        links.close()
        silent.close()
