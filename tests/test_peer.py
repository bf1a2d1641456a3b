"""The peer server: only authenticated peers read verified blobs, with Range, and nothing else."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from candle.download.cluster.peer import PeerServer
from candle.download.node.cache_layout import RepoCache
from candle.download.node.integrity import verify_published
from candle.download.node.listing import RemoteFile
from candle.download.node.pacing import TokenBucket
from candle.download.node.partial_file import PartialFile

SECRET = "peer-secret-for-tests"
ETAG = "a" * 64
MAX_CONNECTIONS = 8
OUTSIDE = "not a blob: a file next to the cache folder"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[PeerServer, str, bytes]]:
    blob = tmp_path / "cache" / "models--org--name" / "blobs" / ETAG
    blob.parent.mkdir(parents=True)
    data = bytes(range(256)) * 64
    blob.write_bytes(data)
    (tmp_path / "secret.txt").write_text(OUTSIDE)
    server = PeerServer("127.0.0.1", SECRET, idle_timeout_s=1.0, max_connections=MAX_CONNECTIONS)
    server.add_root(str(tmp_path / "cache"))
    try:
        yield server, server.blob_url(str(tmp_path / "cache"), "models--org--name", ETAG), data
    finally:
        server.close()


def test_authenticated_peers_read_blobs_with_ranges(served):
    server, url, data = served
    auth = {"Authorization": f"Bearer {SECRET}"}
    assert httpx.get(url, headers=auth).content == data
    partial = httpx.get(url, headers={**auth, "Range": "bytes=100-"})
    assert partial.status_code == 206 and partial.content == data[100:]
    assert server.served == 2


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": SECRET}])
def test_without_the_secret_nothing_is_served(served, headers):
    _, url, _ = served
    response = httpx.get(url, headers=headers)
    assert response.status_code == 401 and response.content == b""


def _published(blobs: Path, data: bytes, lfs: bool) -> str:
    """A blob as candle publishes it: named by the hub's digest of ``data``, hashed and recorded."""
    blob_id = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
    f = RemoteFile("file", len(data), blob_id, hashlib.sha256(data).hexdigest() if lfs else None)
    (blobs / f.etag).write_bytes(data)
    assert verify_published(blobs / f.etag, RepoCache(blobs.parent).record_path(f), f)
    return f.etag


def test_holdings_are_the_blobs_candle_verified_only(served, tmp_path: Path):
    """A peer is sent here for what is advertised: only what candle hashed, as it still is on disk."""
    server, _, _ = served  # its blob is named like an etag but was never verified (and is not that etag's bytes)
    blobs = tmp_path / "cache" / "models--org--name" / "blobs"
    lfs, small = _published(blobs, b"weights" * 100, lfs=True), _published(blobs, b"{}", lfs=False)
    changed = _published(blobs, b"changed later" * 10, lfs=True)
    with (blobs / changed).open("ab") as out:
        out.write(b"!")  # after verification: the record no longer matches
    unrecorded = hashlib.sha256(b"written by another tool").hexdigest()  # right bytes, never hashed by candle
    (blobs / unrecorded).write_bytes(b"written by another tool")
    sha1 = "b" * 40
    others = [sha1, f"{ETAG}.incomplete", f"{sha1}.verified.json", f".{ETAG}.tmp-1234", "A" * 64, "c" * 50, "c" * 65]
    for name in others:
        (blobs / name).write_bytes(b"x")
    (tmp_path / "cache" / "not-a-repo").mkdir()

    holdings = sorted(server.holdings())

    root = str(tmp_path / "cache")
    assert holdings == sorted(
        (("model", "org/name", etag), server.blob_url(root, "models--org--name", etag)) for etag in (lfs, small)
    )


def raw_get(server: PeerServer, path: str) -> tuple[int, bytes]:
    """GET ``path`` exactly as written: httpx would resolve ``..`` before sending it."""
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {SECRET}"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize(
    "path",
    [
        "/blobs/0000000000000000/models--org--name/" + ETAG,
        "/blobs/{root}/models--org--name/../../../secret.txt",  # blobs/../../../ is the cache's parent
        "/blobs/{root}/models--org--name/%2e%2e/%2e%2e/%2e%2e/secret.txt",
        "/blobs/{root}/models--org--name/" + "b" * 64,
        "/blobs/{root}/models--org--name/" + "a" * 50,  # hex, but neither a sha1 nor a sha256
        "/etc/passwd",
    ],
)
def test_only_blobs_of_exposed_caches_can_be_named(served, path):
    server, url, _ = served
    root = url.split("/blobs/")[1].split("/")[0]
    status, body = raw_get(server, path.format(root=root))
    assert status == 404
    assert OUTSIDE.encode() not in body


def idle_socket(server: PeerServer) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)))
    connection.settimeout(60)  # a guard against a hang, not a measurement
    return connection


def read_until_closed(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (raises if it never does)."""
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


def test_an_idle_connection_is_closed_by_the_server(served):
    server, _, _ = served
    with idle_socket(server) as connection:
        assert read_until_closed(connection) == b""


def request_on(connection: socket.socket, path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: peer", f"Authorization: Bearer {SECRET}", *headers]
    connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return read_until_closed(connection)


def test_a_kept_alive_connection_is_closed_once_idle(served):
    server, url, data = served
    with idle_socket(server) as connection:
        response = request_on(connection, url.removeprefix(server.url))
    assert response.startswith(b"HTTP/1.1 200") and response.endswith(data)


def test_many_idle_connections_hold_a_bounded_number_of_threads(served, tmp_path: Path):
    _, url, data = served
    # Idle connections are not timed out during this test: the bound alone must hold the threads.
    server = PeerServer("127.0.0.1", SECRET, idle_timeout_s=600, max_connections=MAX_CONNECTIONS)
    server.add_root(str(tmp_path / "cache"))
    url = server.url + "/blobs/" + url.split("/blobs/")[1]
    before = threading.active_count()
    idle = [idle_socket(server) for _ in range(100)]
    try:
        # Connections are accepted in order: once this one is answered, all 100 before it were taken.
        with idle_socket(server) as last:
            assert request_on(last, url.removeprefix(server.url), "Connection: close").startswith(b"HTTP/1.1 503")
        assert threading.active_count() - before <= MAX_CONNECTIONS
        refused = [read_until_closed(c)[:12] for c in idle[MAX_CONNECTIONS:]]
        assert refused == [b"HTTP/1.1 503"] * (100 - MAX_CONNECTIONS)
    finally:
        for connection in idle:
            connection.close()
    for _ in range(600):  # the handlers see the closed connections and give their slots back
        if threading.active_count() <= before:
            break
        time.sleep(0.05)
    try:
        response = httpx.get(url, headers={"Authorization": f"Bearer {SECRET}"})
        assert response.status_code == 200 and response.content == data
    finally:
        server.close()


def connect_from(server: PeerServer, address: str) -> socket.socket:
    """A connection to the server from ``address`` (any 127.x.y.z is this machine's loopback)."""
    host, port = server.url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), source_address=(address, 0))
    connection.settimeout(60)  # a guard against a hang, not a measurement
    return connection


def trickle(connection: socket.socket, for_s: float = 20.0) -> bool:
    """Send a request head one byte every 0.05 s: True once the server answers or hangs up, False if
    it is still reading after ``for_s`` (a guard: the deadline under test is far shorter)."""
    connection.sendall(b"GET /blobs/x HTTP/1.1\r\nX-Pad: ")
    for _ in range(int(for_s / 0.05)):
        try:
            connection.sendall(b"a")
        except OSError:
            return True
        if select.select([connection], [], [], 0.05)[0]:
            return True
    return False


def test_a_request_head_that_trickles_in_is_cut_at_its_deadline(tmp_path: Path):
    """One header byte at a time, never idle for long: the whole head has a deadline of its own."""
    server = PeerServer("127.0.0.1", SECRET, idle_timeout_s=600, head_timeout_s=0.5)
    try:
        with connect_from(server, "127.0.0.2") as trickler:
            assert trickle(trickler), "the server kept reading a request head that never ends"
            with contextlib.suppress(ConnectionResetError):
                assert read_until_closed(trickler) == b""
    finally:
        server.close()


def test_one_address_cannot_take_every_slot(served, tmp_path: Path):
    """64 connections from one address that send nothing: a peer at another address is still served."""
    _, url, data = served
    server = PeerServer("127.0.0.1", SECRET, idle_timeout_s=600, max_connections=64, max_per_address=16)
    server.add_root(str(tmp_path / "cache"))
    path = url.split("/", 3)[3]
    hogs = [connect_from(server, "127.0.0.2") for _ in range(64)]
    try:
        # Accepted in order: once the last one is answered, every one before it has been taken or refused.
        with connect_from(server, "127.0.0.2") as last:
            assert request_on(last, "/" + path, "Connection: close").startswith(b"HTTP/1.1 503")
        with connect_from(server, "127.0.0.3") as peer:
            response = request_on(peer, "/" + path, "Connection: close")
        assert response.startswith(b"HTTP/1.1 200") and response.endswith(data)
        refused = [read_until_closed(c)[:12] for c in hogs[16:]]
        assert refused == [b"HTTP/1.1 503"] * (64 - 16), "past its 16 slots, the address is refused at once"
    finally:
        for connection in hogs:
            connection.close()
        server.close()


@dataclass
class Relay:
    """A node's peer server and a transfer's partial file of a blob of ``data``, opened and empty: the test
    writes ranges into it while the server serves it (``serving``) to ``copier``s."""

    cache: Path
    partial: PartialFile
    server: PeerServer

    @classmethod
    def of(cls, tmp_path: Path, data: bytes) -> Relay:
        cache = tmp_path / "cache"
        path = cache / "models--org--name" / "blobs" / ("c" * 64 + ".x.incomplete")
        path.parent.mkdir(parents=True)
        partial = PartialFile(path, RemoteFile("model.safetensors", len(data), "d" * 40, "c" * 64), pieces=True)
        partial.open()
        server = PeerServer("127.0.0.1", SECRET)
        server.add_root(str(cache))
        return cls(cache, partial, server)

    def serving(self) -> contextlib.AbstractContextManager[None]:
        return self.server.serving_partial(str(self.cache), "models--org--name", "c" * 64, self.partial)

    def copier(self, first: int = 0) -> Copier:
        return Copier(self.server.blob_url(str(self.cache), "models--org--name", "c" * 64), first=first)

    def copy_under_way(self, source: str, first: bytes) -> Copier:
        """A copy started once ``source`` wrote ``first`` (1,000 bytes or more) from byte 0, and served them."""
        self.partial.writer(source, 0, self.partial.size).write(first)
        copier = self.copier()
        copier.start()
        assert copier.first_bytes.wait(30), "the copy started while the transfer ran"
        return copier


class Copier(threading.Thread):
    """A peer copying a blob (or a range of it) from the server: what it received, and whether the body
    was cut short."""

    def __init__(self, url: str, first: int = 0) -> None:
        super().__init__()
        self.url = url
        self.first = first
        self.received = bytearray()
        self.first_bytes = threading.Event()  # set once 1,000 bytes are in
        self.error: httpx.TransportError | None = None

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {SECRET}", "Range": f"bytes={self.first}-"}
        try:
            with httpx.stream("GET", self.url, headers=headers) as response:
                for chunk in response.iter_bytes():
                    self.received.extend(chunk)
                    if len(self.received) >= 1000:
                        self.first_bytes.set()
        except httpx.TransportError as e:
            self.error = e


def test_a_blob_still_arriving_is_served_as_it_grows(tmp_path: Path):
    """A relay: a peer gets the bytes its upstream has written so far before the rest exists, then the rest."""
    data = bytes(range(256)) * 4096  # 1 MiB
    relay = Relay.of(tmp_path, data)
    partial, server = relay.partial, relay.server
    copier = relay.copier()
    try:
        with relay.serving():
            upstream = partial.writer("hub", 0, len(data))
            upstream.write(data[:1000])
            copier.start()
            # A guard, not a measurement: the rest is written only once the first bytes were served.
            assert copier.first_bytes.wait(30), "nothing was served before the blob was complete"
            assert bytes(copier.received) == data[:1000]
            upstream.write(data[1000:])
            copier.join(timeout=30)
    finally:
        server.close()
    assert bytes(copier.received) == data and copier.error is None


def test_a_range_of_a_blob_arriving_out_of_order_is_served_once_its_own_bytes_are_written(tmp_path: Path):
    """The upstream writes its ranges at once, the later half first: a peer asking for the later half
    gets it while the first half is still a hole (zeros on disk), never the hole's bytes."""
    data = bytes(range(256)) * 4096
    half = len(data) // 2
    relay = Relay.of(tmp_path, data)
    partial, server = relay.partial, relay.server
    later, whole = relay.copier(first=half), relay.copier()
    try:
        with relay.serving():
            second = partial.writer("hub", half, len(data))
            second.write(data[half : half + 1000])
            later.start()
            whole.start()
            assert later.first_bytes.wait(30), "the later range was not served while the first was missing"
            second.write(data[half + 1000 :])
            later.join(timeout=30)
            assert bytes(later.received) == data[half:] and not whole.received, "nothing of the hole was sent"
            partial.writer("hub", 0, half).write(data[:half])
            whole.join(timeout=30)
    finally:
        server.close()
    assert bytes(whole.received) == data and whole.error is None


def test_a_growing_blob_whose_transfer_failed_ends_the_copy_short(tmp_path: Path):
    relay = Relay.of(tmp_path, b"x" * 5000)
    try:
        with relay.serving():
            copier = relay.copy_under_way("hub", b"x" * 1000)
        copier.join(timeout=30)  # the upstream's transfer ended without the rest: the body is cut
    finally:
        relay.server.close()
    assert bytes(copier.received) == b"x" * 1000 and isinstance(copier.error, httpx.RemoteProtocolError)


def test_a_growing_blob_set_aside_is_not_served_on(tmp_path: Path):
    """Its bytes were found wrong as a whole and set aside: a copy of them in progress stops, and a new
    one gets the new file's bytes only."""
    relay = Relay.of(tmp_path, b"y" * 5000)
    partial = relay.partial
    try:
        with relay.serving():
            copier = relay.copy_under_way("a", b"z" * 2000)
            partial.set_aside()
            copier.join(timeout=30)
            partial.open()
            partial.writer("b", 0, 5000).write(b"y" * 5000)
            again = relay.copier()
            again.start()
            again.join(timeout=30)
    finally:
        relay.server.close()
    assert isinstance(copier.error, httpx.RemoteProtocolError) and set(copier.received) == {ord("z")}
    assert bytes(again.received) == b"y" * 5000


CAP = 8 * 1024 * 1024  # bytes/s for the whole server


def test_the_upload_cap_is_shared_by_all_connections(tmp_path: Path):
    """CANDLE_DOWNLOAD_PEER_BANDWIDTH is a node's total: 4 peers at once share it, each does not get it."""
    blob = tmp_path / "cache" / "models--org--name" / "blobs" / ETAG
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"w" * (2 * 1024 * 1024))
    server = PeerServer("127.0.0.1", SECRET, CAP)
    server.add_root(str(tmp_path / "cache"))
    url = server.blob_url(str(tmp_path / "cache"), "models--org--name", ETAG)
    stamps: list[tuple[float, int]] = []
    lock = threading.Lock()

    def read() -> None:
        with httpx.stream("GET", url, headers={"Authorization": f"Bearer {SECRET}"}) as response:
            for chunk in response.iter_bytes():
                with lock:
                    stamps.append((time.monotonic(), len(chunk)))

    readers = [threading.Thread(target=read) for _ in range(4)]
    try:
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(timeout=60)
    finally:
        server.close()
    stamps.sort()
    # The rate over the window from the first byte to the last: everything after the first chunk. A
    # busy machine only makes it lower: how exactly the budget paces is test_the_upload_budget_...
    window = stamps[-1][0] - stamps[0][0]
    rate = sum(n for _, n in stamps[1:]) / window
    assert sum(n for _, n in stamps) == 4 * 2 * 1024 * 1024
    assert rate <= CAP * 1.1, f"{rate / 1e6:.1f} MB/s over 4 connections, cap {CAP / 1e6:.1f} MB/s"


def test_the_upload_budget_schedules_every_byte_of_every_sender_at_exactly_its_rate():
    """Four senders at once, on a clock that stands still: each send waits until the uplink is free
    of the bytes reserved before it, so the last one starts when all the others' bytes have gone at
    the budget's rate; not sooner (over the cap) and not later (slower than it)."""
    waits: list[float] = []  # what each send was told to sleep
    bucket = TokenBucket(CAP, clock=lambda: 1000.0, sleep=waits.append)
    chunk, sends = bucket.chunk, 40

    def send() -> None:
        for _ in range(sends):
            bucket.take(chunk)

    senders = [threading.Thread(target=send) for _ in range(4)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    assert len(waits) == 4 * sends - 1, "every send but the first waits for the ones reserved before it"
    assert sorted(waits) == pytest.approx([k * chunk / CAP for k in range(1, 4 * sends)])
