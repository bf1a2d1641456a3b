"""Node-to-node copies: each downloader serves its blobs to the other nodes' downloaders.

A small HTTP server in the download actor's process answers ``GET /blobs/<root>/<repo folder>/<etag>``
with ``Range`` support (huggingface_hub's ``http_get`` resumes against it exactly as against the
hub) for callers that present the cluster's peer secret. Only verified blobs under cache folders
this node's downloader was asked to use are reachable: ``<root>`` is an opaque id of such a folder,
names are checked against the HF cache layout, and nothing else on disk can be named.

A blob this node is still receiving can be served too, while it arrives (a relay: see
``sourcing.py``): the downloader names the transfer's ``.incomplete`` file and size with
``serving_partial``, and a peer asking for that blob gets its bytes up to what has been written,
then waits (up to ``idle_timeout_s``) for more. If the transfer ends without the rest, the body is
cut short and the peer resumes elsewhere. Such bytes are not trusted: the receiving node verifies
the whole blob against the hub's checksum before it publishes it, exactly as for any other source.

Uploads are paced by one ``TokenBucket`` for the whole server: ``bytes_per_s`` caps the node's
total upload to peers, however many connections share it.

A connection costs a thread, so the server bounds both: a connection silent for ``idle_timeout_s``
is closed, and past ``max_connections`` a new one gets an immediate 503 (peers then copy from
another source) instead of a thread of its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .pacing import TokenBucket

_ETAG = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # a git blob sha1 or an LFS sha256: names of verified blobs
_PATH = re.compile(
    rf"^/blobs/(?P<root>[0-9a-f]{{16}})/(?P<repo>(?:models|datasets|spaces)--[\w.-]+)/(?P<etag>{_ETAG.pattern})$"
)
_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_CHUNK = 1024 * 1024
_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_POLL_S = 0.01  # how often a relay looks for bytes its upstream wrote since


@dataclass
class _Growing:
    """A blob this node is receiving: its transfer's file, the blob's size, and whether it still runs."""

    path: Path
    size: int
    active: bool = True


def root_id(cache_dir: str) -> str:
    return hashlib.sha256(cache_dir.encode()).hexdigest()[:16]


def parse_range(header: str | None, size: int) -> tuple[int, int]:
    """A ``bytes=a-`` or ``bytes=a-b`` header as a half-open interval (the whole file otherwise)."""
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", header.strip()) if header else None
    if not match:
        return 0, size
    start = min(int(match[1]), size)
    end = min(int(match[2]) + 1, size) if match[2] else size
    return start, max(start, end)


def send_range(
    handler: BaseHTTPRequestHandler,
    path: Path,
    start: int,
    end: int,
    bucket: TokenBucket | None = None,
    growing: _Growing | None = None,
    wait_s: float = 0.0,
) -> int:
    """Write ``path[start:end]`` as the body; returns the bytes sent (fewer: the body was cut short).

    Zero-copy for a complete file without a cap; paced chunks otherwise. A ``growing`` file is
    sent as it is written, waiting up to ``wait_s`` for each next byte, and ends early once its
    transfer has ended without the rest (or stalled).
    """
    if growing is None and bucket is None:
        with path.open("rb") as source:
            return handler.connection.sendfile(source, start, end - start) if end > start else 0
    chunk = bucket.chunk if bucket else _CHUNK
    fd = _open(path) if growing else os.open(path, os.O_RDONLY)
    position, waited_since = start, time.monotonic()
    try:
        while position < end:
            ended = growing is not None and not growing.active  # read before the size: no byte is missed
            available = os.fstat(fd).st_size if fd is not None else 0
            if available > position:
                data = os.pread(fd, min(chunk, end - position, available - position), position)
                if bucket is not None:
                    bucket.take(len(data))
                handler.wfile.write(data)
                position += len(data)
                waited_since = time.monotonic()
            elif ended or time.monotonic() - waited_since > wait_s:
                handler.close_connection = True  # Content-Length promised more: the peer sees a short body
                break
            else:
                time.sleep(_POLL_S)
                fd = fd if fd is not None else _open(path)
    finally:
        if fd is not None:
            os.close(fd)
    return position - start


def _open(path: Path) -> int | None:
    """A transfer's file, or None while its writer has not created it yet."""
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None


class _BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, up to ``max_connections``; beyond that a 503 from the accepting thread."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog: a burst of peers is queued by the kernel, not dropped

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_connections: int) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(max_connections)
        self.open_connections: set[socket.socket] = set()  # cut on close: a node that stops serves no more

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        if not self._slots.acquire(blocking=False):
            request.settimeout(1.0)  # never let a peer that does not read block the accepting thread
            with contextlib.suppress(OSError):
                request.sendall(_BUSY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        self.open_connections.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.open_connections.discard(request)
            self._slots.release()

    def cut_connections(self) -> None:
        for connection in list(self.open_connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class PeerServer:
    """Serves this node's blobs (verified, or still arriving) to authenticated peers, from a background thread."""

    def __init__(
        self,
        host: str,
        secret: str,
        bytes_per_s: float | None = None,
        *,
        idle_timeout_s: float = 60.0,
        max_connections: int = 64,
    ) -> None:
        self.secret = secret
        self.bucket = TokenBucket(bytes_per_s) if bytes_per_s else None  # the node's upload budget, all peers together
        self.idle_timeout_s = idle_timeout_s
        self.roots: dict[str, Path] = {}
        self.served = 0  # bodies served, for tests and metrics
        self.sent = 0  # bytes uploaded to peers, for metrics
        self._growing: dict[tuple[str, str, str], _Growing] = {}
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = idle_timeout_s  # socket time-out: an idle (or stalled) connection is closed

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
                """Quiet: peer copies are logged by the downloader that asked."""

            def do_GET(self) -> None:
                server.handle(self)

        self._http = _BoundedHTTPServer((host, 0), Handler, max_connections)
        threading.Thread(target=self._http.serve_forever, name="candle-peer-server", daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}"

    def add_root(self, cache_dir: str) -> str:
        """Allow peers to read verified blobs of this cache folder; returns its id in URLs."""
        key = root_id(cache_dir)
        self.roots[key] = Path(cache_dir)
        return key

    def blob_url(self, cache_dir: str, repo_folder: str, etag: str) -> str:
        return f"{self.url}/blobs/{root_id(cache_dir)}/{repo_folder}/{etag}"

    @contextlib.contextmanager
    def serving_partial(self, cache_dir: str, repo_folder: str, etag: str, path: Path, size: int) -> Iterator[None]:
        """Serve blob ``etag`` from ``path``, the file a transfer is writing, while the block runs.

        Leave the block only once the transfer is over (published or abandoned): a peer reading
        past what was written then gets the rest from the published blob's bytes, or a short body.
        """
        key = (root_id(cache_dir), repo_folder, etag)
        growing = _Growing(path, size)
        self._growing[key] = growing
        try:
            yield
        finally:
            growing.active = False
            if self._growing.get(key) is growing:
                del self._growing[key]

    def holdings(self) -> list[tuple[tuple[str, str, str], str]]:
        """Every verified blob this server can serve: ((repo type, repo id, etag), its URL).

        Blocking (a directory walk). Names that are not an etag (``.incomplete`` transfers, temp
        files, sidecars of other writers) are never reported: peers could not fetch them anyway.
        """
        found = []
        for root in self.roots.values():
            for repo_dir in root.glob("*--*"):
                kind, _, name = repo_dir.name.partition("--")
                if kind not in _REPO_TYPES or not (repo_dir / "blobs").is_dir():
                    continue
                for blob in (repo_dir / "blobs").iterdir():
                    if _ETAG.fullmatch(blob.name):
                        key = (_REPO_TYPES[kind], name.replace("--", "/"), blob.name)
                        found.append((key, self.blob_url(str(root), repo_dir.name, blob.name)))
        return found

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        header = request.headers.get("Authorization", "")
        supplied = header[len("Bearer ") :] if header.startswith("Bearer ") else ""
        if not hmac.compare_digest(supplied.encode(), self.secret.encode()):
            self._refuse(request, 401)
            return
        match = _PATH.match(request.path)
        root = self.roots.get(match["root"]) if match else None
        blob = root / match["repo"] / "blobs" / match["etag"] if root and match else None
        growing = self._growing.get((match["root"], match["repo"], match["etag"])) if blob else None
        if blob is not None and blob.is_file():
            growing, size = None, blob.stat().st_size
        elif growing is not None:
            blob, size = growing.path, growing.size
        else:
            self._refuse(request, 404)
            return
        start, end = parse_range(request.headers.get("Range"), size)
        request.send_response(206 if request.headers.get("Range") else 200)
        request.send_header("Content-Length", str(end - start))
        request.send_header("Content-Type", "application/octet-stream")
        request.send_header("Accept-Ranges", "bytes")
        if request.headers.get("Range"):
            request.send_header("Content-Range", f"bytes {start}-{max(start, end - 1)}/{size}")
        request.end_headers()
        self.served += 1
        sent = send_range(request, blob, start, end, self.bucket, growing, self.idle_timeout_s)
        with self._lock:
            self.sent += sent

    @staticmethod
    def _refuse(request: BaseHTTPRequestHandler, status: int) -> None:
        request.send_response(status)
        request.send_header("Content-Length", "0")
        request.end_headers()

    def close(self) -> None:
        """Stop serving, and cut the copies in progress (peers resume them from another source)."""
        self._http.shutdown()
        self._http.server_close()
        self._http.cut_connections()
