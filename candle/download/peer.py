"""Node-to-node copies: each downloader serves its verified blobs to the other nodes' downloaders.

A small HTTP server in the download actor's process answers ``GET /blobs/<root>/<repo folder>/<etag>``
with ``Range`` support (huggingface_hub's ``http_get`` resumes against it exactly as against the
hub) for callers that present the cluster's peer secret. Only verified blobs under cache folders
this node's downloader was asked to use are reachable: ``<root>`` is an opaque id of such a folder,
names are checked against the HF cache layout, and nothing else on disk can be named.

A connection costs a thread, so the server bounds both: a connection silent for ``idle_timeout_s``
is closed, and past ``max_connections`` a new one gets an immediate 503 (peers then copy from
another source) instead of a thread of its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_ETAG = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # a git blob sha1 or an LFS sha256: names of verified blobs
_PATH = re.compile(
    rf"^/blobs/(?P<root>[0-9a-f]{{16}})/(?P<repo>(?:models|datasets|spaces)--[\w.-]+)/(?P<etag>{_ETAG.pattern})$"
)
_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_CHUNK = 1024 * 1024
_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


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


def send_file_range(
    handler: BaseHTTPRequestHandler, path: Path, start: int, end: int, bytes_per_s: float | None = None
) -> int:
    """Write ``path[start:end]`` as the body: zero-copy when unthrottled, paced chunks otherwise."""
    with path.open("rb") as source:
        if not bytes_per_s:
            return handler.connection.sendfile(source, start, end - start) if end > start else 0
        source.seek(start)
        sent = 0
        while start + sent < end:
            chunk = source.read(min(_CHUNK, end - start - sent))
            began = time.monotonic()
            handler.wfile.write(chunk)
            sent += len(chunk)
            time.sleep(max(0.0, len(chunk) / bytes_per_s - (time.monotonic() - began)))
        return sent


class _BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, up to ``max_connections``; beyond that a 503 from the accepting thread."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog: a burst of peers is queued by the kernel, not dropped

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_connections: int) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(max_connections)

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
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class PeerServer:
    """Serves this node's verified blobs to authenticated peers, from a background thread."""

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
        self.bytes_per_s = bytes_per_s  # a cap, for tests of slow or dying peers
        self.roots: dict[str, Path] = {}
        self.served = 0  # bodies served, for tests and metrics
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
        if blob is None or not blob.is_file():
            self._refuse(request, 404)
            return
        size = blob.stat().st_size
        start, end = parse_range(request.headers.get("Range"), size)
        request.send_response(206 if request.headers.get("Range") else 200)
        request.send_header("Content-Length", str(end - start))
        request.send_header("Content-Type", "application/octet-stream")
        request.send_header("Accept-Ranges", "bytes")
        if request.headers.get("Range"):
            request.send_header("Content-Range", f"bytes {start}-{max(start, end - 1)}/{size}")
        request.end_headers()
        self.served += 1
        send_file_range(request, blob, start, end, self.bytes_per_s)

    @staticmethod
    def _refuse(request: BaseHTTPRequestHandler, status: int) -> None:
        request.send_response(status)
        request.send_header("Content-Length", "0")
        request.end_headers()

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()
