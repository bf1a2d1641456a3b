"""The peer server: only authenticated peers read verified blobs, with Range, and nothing else."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from candle.download.peer import PeerServer

SECRET = "peer-secret-for-tests"
ETAG = "a" * 64
OUTSIDE = "not a blob: a file next to the cache folder"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[PeerServer, str, bytes]]:
    blob = tmp_path / "cache" / "models--org--name" / "blobs" / ETAG
    blob.parent.mkdir(parents=True)
    data = bytes(range(256)) * 64
    blob.write_bytes(data)
    (tmp_path / "secret.txt").write_text(OUTSIDE)
    server = PeerServer("127.0.0.1", SECRET)
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
