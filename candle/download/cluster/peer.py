"""Node-to-node copies: each downloader serves its blobs to the other nodes' downloaders.

A small HTTP server in the download actor's process answers ``GET /blobs/<root>/<repo folder>/<etag>``
with ``Range`` support (a node fetches ranges of it exactly as ranges of the hub's files) for
callers that present the cluster's peer secret. Only verified blobs under cache folders this
node's downloader was asked to use are reachable: ``<root>`` is an opaque id of such a folder,
names are checked against the HF cache layout, and nothing else on disk can be named.

A blob this node is still receiving can be served too, while it arrives (a relay: see
``sourcing.py``): the downloader names the transfer's partial file with ``serving_partial``, and a
peer asking for a range of that blob gets its bytes as far as they are written from the range's
start on (the file is written in several ranges at once: its record of who wrote what says how far
that is), then waits (up to ``idle_timeout_s``) for more. If the transfer ends without the rest, or
starts its file over, the body is cut short and the peer resumes elsewhere. Such bytes are not
trusted: the receiving node verifies the whole blob against the hub's checksum before it publishes
it, exactly as for any other source.

Uploads are paced by one ``TokenBucket`` for the whole server: ``bytes_per_s`` caps the node's
total upload to peers, however many connections share it.

A connection costs a thread, so the server bounds both. A request head (request line and headers)
must arrive whole within ``head_timeout_s`` of when the server starts waiting for it, so a client
that trickles one byte at a time cannot keep a slot; once the head is in, a connection silent for
``idle_timeout_s`` is closed. A new connection gets an immediate 503 (peers then copy from another
source) instead of a thread of its own when its address already holds ``max_per_address``
connections, and only then when the server holds ``max_connections``: one client, however many
connections it opens, leaves slots for the other nodes.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import os
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ..node.cache_layout import ETAG, RepoCache
from ..node.pacing import TokenBucket
from ..node.partial_file import PartialFile

_PATH = re.compile(
    rf"^/blobs/(?P<root>[0-9a-f]{{16}})/(?P<repo>(?:models|datasets|spaces)--[\w.-]+)/(?P<etag>{ETAG.pattern})$"
)
_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_CHUNK = 1024 * 1024
_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_POLL_S = 0.01  # how often a relay looks for bytes its upstream wrote since


@dataclass
class _Growing:
    """A blob this node is receiving: its transfer's file, and whether the transfer still runs."""

    partial: PartialFile
    active: bool = True

    def available(self, position: int, generation: int) -> int | None:
        """How far the bytes from ``position`` on are written; None once the file was started over
        since ``generation`` (its bytes set aside or dropped)."""
        if self.partial.provenance.generation != generation:
            return None
        return self.partial.provenance.run_end(position)


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
    generation = growing.partial.provenance.generation if growing else 0
    fd = _open(path) if growing else os.open(path, os.O_RDONLY)
    position, waited_since = start, time.monotonic()
    try:
        while position < end:
            ended = growing is not None and not growing.active  # read before the bytes: no byte is missed
            if growing is not None:
                available = growing.available(position, generation)
            else:
                available = os.fstat(fd).st_size if fd is not None else 0
            if available is None:
                handler.close_connection = True  # the file was started over: these bytes are gone
                break
            if fd is not None and available > position:  # no file yet: nothing available
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


class _HeadDeadline(io.RawIOBase):
    """A connection's incoming bytes, read with a deadline for the whole request head when one is set
    (``deadline``, a ``time.monotonic()`` value), and ``idle_s`` per read otherwise."""

    def __init__(self, connection: socket.socket, idle_s: float) -> None:
        self.connection = connection
        self.idle_s = idle_s
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        timeout = self.idle_s
        if self.deadline is not None:
            timeout = min(timeout, self.deadline - time.monotonic())
            if timeout <= 0:
                raise TimeoutError("the request head did not arrive in time")
        self.connection.settimeout(timeout)
        try:
            return self.connection.recv_into(buffer)
        finally:
            self.connection.settimeout(self.idle_s)  # sends keep the idle time-out


class _BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, up to ``max_per_address`` per client address and ``max_connections`` in
    all; beyond either, a 503 from the accepting thread."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog: a burst of peers is queued by the kernel, not dropped

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        max_connections: int,
        max_per_address: int,
    ) -> None:
        super().__init__(address, handler)
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self._per_address: Counter[str] = Counter()
        self._slots_lock = threading.Lock()
        self.open_connections: set[socket.socket] = set()  # cut on close: a node that stops serves no more

    def _take_slot(self, address: str) -> bool:
        with self._slots_lock:
            if self._per_address[address] >= self.max_per_address:
                return False  # this client's share is taken: the shared slots stay for the others
            if self._per_address.total() >= self.max_connections:
                return False
            self._per_address[address] += 1
            return True

    def _give_back(self, address: str) -> None:
        with self._slots_lock:
            self._per_address[address] -= 1
            if not self._per_address[address]:
                del self._per_address[address]

    def process_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:  # type: ignore[override]
        if not self._take_slot(client_address[0]):
            request.settimeout(1.0)  # never let a peer that does not read block the accepting thread
            with contextlib.suppress(OSError):
                request.sendall(_BUSY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._give_back(client_address[0])
            raise

    def process_request_thread(self, request: socket.socket, client_address: tuple[str, int]) -> None:  # type: ignore[override]
        self.open_connections.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.open_connections.discard(request)
            self._give_back(client_address[0])

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
        head_timeout_s: float = 10.0,
        max_per_address: int = 16,
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

            def setup(self) -> None:
                super().setup()
                self.head = _HeadDeadline(self.connection, idle_timeout_s)
                self.rfile = io.BufferedReader(self.head)

            def handle_one_request(self) -> None:
                self.head.deadline = time.monotonic() + head_timeout_s  # a time-out ends the connection
                super().handle_one_request()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
                """Quiet: peer copies are logged by the downloader that asked."""

            def do_GET(self) -> None:
                self.head.deadline = None
                server.handle(self)

        self._http = _BoundedHTTPServer((host, 0), Handler, max_connections, max_per_address)
        threading.Thread(target=self._http.serve_forever, name="candle-peer-server", daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}"

    def add_root(self, cache_dir: str) -> str:
        """Allow peers to read verified blobs of this cache folder; returns its id in URLs."""
        key = root_id(cache_dir)
        self.roots[key] = Path(cache_dir)
        return key

    def blob_url(self, cache_dir: str, repo_folder: str, etag: str) -> str:
        return f"{self.url}/blobs/{root_id(cache_dir)}/{repo_folder}/{etag}"

    @contextlib.contextmanager
    def serving_partial(self, cache_dir: str, repo_folder: str, etag: str, partial: PartialFile) -> Iterator[None]:
        """Serve blob ``etag`` from ``partial``, the file a transfer is writing, while the block runs.

        Leave the block only once the transfer is over (published or abandoned): a peer reading
        past what was written then gets the rest from the published blob's bytes, or a short body.
        """
        key = (root_id(cache_dir), repo_folder, etag)
        growing = _Growing(partial)
        self._growing[key] = growing
        try:
            yield
        finally:
            growing.active = False
            if self._growing.get(key) is growing:
                del self._growing[key]

    def holdings(self) -> list[tuple[tuple[str, str, str], str]]:
        """Every blob candle verified that this server can serve: ((repo type, repo id, etag), its URL).

        Blocking (a directory walk). From candle's verification records (``RepoCache.verified_etags``):
        a file named like an etag that candle never hashed, or that changed since, is not advertised.
        """
        found = []
        for root in self.roots.values():
            for repo_dir in root.glob("*--*"):
                kind, _, name = repo_dir.name.partition("--")
                if kind not in _REPO_TYPES:
                    continue
                for etag in RepoCache(repo_dir).verified_etags():
                    key = (_REPO_TYPES[kind], name.replace("--", "/"), etag)
                    found.append((key, self.blob_url(str(root), repo_dir.name, etag)))
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
        growing = self._growing.get((match["root"], match["repo"], match["etag"])) if blob and match else None
        if blob is not None and blob.is_file():
            growing, size = None, blob.stat().st_size
        elif growing is not None:
            blob, size = growing.partial.path, growing.partial.size
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
