"""The peer server: only authenticated peers read verified blobs, with Range, and nothing else."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from candle.download.peer import PeerServer

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


def test_holdings_are_the_verified_blobs_only(served, tmp_path: Path):
    server, url, _ = served
    blobs = tmp_path / "cache" / "models--org--name" / "blobs"
    sha1 = "b" * 40
    others = [f"{ETAG}.incomplete", f"{sha1}.verified.json", f".{ETAG}.tmp-1234", "A" * 64, "c" * 50, "c" * 65]
    for name in [sha1, *others]:
        (blobs / name).write_bytes(b"x")
    (tmp_path / "cache" / "not-a-repo").mkdir()

    holdings = sorted(server.holdings())

    assert holdings == sorted(
        [
            (("model", "org/name", ETAG), url),
            (("model", "org/name", sha1), server.blob_url(str(tmp_path / "cache"), "models--org--name", sha1)),
        ]
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


def partial_url(server: PeerServer, cache: Path) -> str:
    return server.blob_url(str(cache), "models--org--name", "c" * 64)


def test_a_blob_still_arriving_is_served_as_it_grows(tmp_path: Path):
    """A relay: a peer copies the bytes its upstream has written so far, then waits for more."""
    cache = tmp_path / "cache"
    partial = cache / "models--org--name" / "blobs" / ("c" * 64 + ".x.incomplete")
    partial.parent.mkdir(parents=True)
    data = bytes(range(256)) * 4096  # 1 MiB
    server = PeerServer("127.0.0.1", SECRET)
    server.add_root(str(cache))
    received: list[bytes] = []
    try:
        with server.serving_partial(str(cache), "models--org--name", "c" * 64, partial, len(data)):
            partial.write_bytes(data[:1000])
            reader = threading.Thread(
                target=lambda: received.append(
                    httpx.get(partial_url(server, cache), headers={"Authorization": f"Bearer {SECRET}"}).content
                )
            )
            reader.start()
            time.sleep(0.2)  # the reader has the first 1000 bytes and waits for the rest
            with partial.open("ab") as out:
                out.write(data[1000:])
            reader.join(timeout=30)
    finally:
        server.close()
    assert received == [data]


def test_a_growing_blob_whose_transfer_failed_ends_the_copy_short(tmp_path: Path):
    cache = tmp_path / "cache"
    partial = cache / "models--org--name" / "blobs" / ("c" * 64 + ".x.incomplete")
    partial.parent.mkdir(parents=True)
    server = PeerServer("127.0.0.1", SECRET)
    server.add_root(str(cache))
    errors: list[Exception] = []

    def read() -> None:
        try:
            httpx.get(partial_url(server, cache), headers={"Authorization": f"Bearer {SECRET}"})
        except httpx.TransportError as e:
            errors.append(e)

    try:
        with server.serving_partial(str(cache), "models--org--name", "c" * 64, partial, 5000):
            partial.write_bytes(b"x" * 1000)
            reader = threading.Thread(target=read)
            reader.start()
            time.sleep(0.2)
        reader.join(timeout=30)  # the upstream's transfer ended without the rest: the body is cut
    finally:
        server.close()
    assert len(errors) == 1 and isinstance(errors[0], httpx.RemoteProtocolError)


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
    # The rate over the window from the first byte to the last: everything after the first chunk.
    window = stamps[-1][0] - stamps[0][0]
    rate = sum(n for _, n in stamps[1:]) / window
    assert sum(n for _, n in stamps) == 4 * 2 * 1024 * 1024
    assert CAP / 2 <= rate <= CAP * 1.1, f"{rate / 1e6:.1f} MB/s over 4 connections, cap {CAP / 1e6:.1f} MB/s"
