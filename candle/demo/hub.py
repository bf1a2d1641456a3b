"""A Hugging Face Hub look-alike on loopback, for tests, benchmarks and the offline demo.

It serves a folder of repos (``<root>/<namespace>/<name>/...``, one revision per repo) over the
endpoints huggingface_hub calls: revision info, the recursive tree listing, and ``HEAD``/``GET`` on
``resolve`` with the headers the client relies on (``X-Repo-Commit``, ``ETag``, ``X-Linked-Etag``,
``X-Linked-Size``, ``Content-Length``, ``Range``). Faults can be switched on per test (a dropped
connection mid-body, corrupted bytes, 429 with ``Retry-After``, 500, a stall) and a bandwidth cap
set, and it counts the requests and body bytes it served and the faults it injected per file, so
tests can assert how many transfers really happened. For tests of what candle trusts, a repo's
listing can be made hostile (``ListingOverride``: another commit, extra paths, rewritten tree
fields), and the hub can answer like a plain mirror (bare 404s without the Hub's ``X-Error-Code``).
A repo's ``main`` can move to a new commit (``HubState.publish``) while the commits it left stay
served by their hashes, as on the Hub. It binds loopback only.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import random
import re
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

# The extensions the Hub's default .gitattributes stores in LFS; bigger files go to LFS as well.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".model")
LFS_MIN_SIZE = 10 * 1024 * 1024
CHUNK_SIZE = 256 * 1024
HASH_BLOCK = 8 * 1024 * 1024

FaultKind = Literal["drop", "corrupt", "429", "500", "stall"]


@dataclass
class Fault:
    """One injected failure on the ``GET`` bodies of files matching ``path`` (a glob).

    ``times`` is how many matching responses it spoils (``None``: every one). ``at`` is the
    fraction of the body sent before a drop, stall or corrupted byte.
    """

    kind: FaultKind
    path: str = "*"
    repo: str = "*"
    times: int | None = 1
    at: float = 0.5
    retry_after: int | None = 2
    stall_seconds: float = 60.0

    def matches(self, repo_id: str, path: str) -> bool:
        return fnmatch.fnmatch(repo_id, self.repo) and fnmatch.fnmatch(path, self.path)


@dataclass
class ListingOverride:
    """What a hostile (or broken) mirror claims about one repo, served through the real endpoints.

    ``commit`` replaces the repo's sha in ``repo_info``, ``X-Repo-Commit`` and the URLs it answers;
    ``aliases`` lists extra paths, each served with the bytes and checksums of an existing file;
    ``fields`` replaces fields of a path's tree entry (``oid``, ``size``, ``lfs``) verbatim.
    """

    commit: str | None = None
    aliases: dict[str, str] = field(default_factory=dict)  # listed path -> existing file it serves
    fields: dict[str, dict[str, object]] = field(default_factory=dict)  # listed path -> entry fields


@dataclass(frozen=True)
class HubFile:
    path: str
    size: int
    blob_id: str  # git blob sha1, what the Hub reports as `oid`
    sha256: str | None  # set for LFS files; their ETag
    local_path: Path

    @property
    def etag(self) -> str:
        return self.sha256 or self.blob_id


@dataclass(frozen=True)
class HubRepo:
    repo_id: str
    commit: str
    files: dict[str, HubFile]
    entry_fields: dict[str, dict[str, object]] = field(default_factory=dict)  # see ListingOverride.fields


@dataclass
class HubStats:
    """What the hub served; keys are ``(repo_id, path)``."""

    bodies: Counter = field(default_factory=Counter)  # GET responses that started a body
    body_bytes: Counter = field(default_factory=Counter)
    heads: Counter = field(default_factory=Counter)
    api_calls: Counter = field(default_factory=Counter)  # keyed by repo_id
    faults: Counter = field(default_factory=Counter)  # injected faults, keyed by (repo_id, path, kind)

    def bodies_for(self, repo_id: str) -> dict[str, int]:
        return {path: n for (repo, path), n in self.bodies.items() if repo == repo_id}

    def bytes_for(self, repo_id: str) -> int:
        return sum(n for (repo, _), n in self.body_bytes.items() if repo == repo_id)


def is_lfs(path: str, size: int) -> bool:
    return path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE


def _hash_file(path: Path, size: int, lfs: bool) -> tuple[str, str | None]:
    """Return the git blob sha1 of the file and, for LFS files, its sha256."""
    git = hashlib.sha1(f"blob {size}\0".encode())
    sha = hashlib.sha256() if lfs else None
    with path.open("rb") as f:
        while block := f.read(HASH_BLOCK):
            git.update(block)
            if sha is not None:
                sha.update(block)
    return git.hexdigest(), sha.hexdigest() if sha else None


def requested_range(header: str | None, size: int) -> tuple[int, int]:
    """The half-open byte interval a ``Range: bytes=a-b``, ``bytes=a-`` or ``bytes=-n`` header asks for
    (the whole file without one). The hub reads the header itself, so a Range bug in the download
    service's peer server is never mirrored by the server the tests run against."""
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header or "")
    if match is None or not (match[1] or match[2]):
        return 0, size
    if not match[1]:  # a suffix: the last n bytes
        return max(0, size - int(match[2])), size
    start = min(int(match[1]), size)
    end = min(int(match[2]) + 1, size) if match[2] else size
    return start, max(start, end)


class HubState:
    """The repos under ``root`` (hashed lazily, re-hashed when a file changes), faults and stats."""

    def __init__(self, root: Path, gated: set[str] | None = None, tokens: set[str] | None = None) -> None:
        self.root = Path(root)
        self.gated = set(gated or ())
        self.tokens = set(tokens or ())
        self.stats = HubStats()
        self.faults: list[Fault] = []
        self.bandwidth: float | None = None  # bytes per second per response, None = unlimited
        self.throttles: dict[str, float] = {}  # repo glob -> bytes per second, overrides `bandwidth`
        self.overrides: dict[str, ListingOverride] = {}  # repo_id -> hostile listing
        self.plain_mirror = False  # answer "not found" with a bare 404, without X-Error-Code
        self.history: dict[str, dict[str, HubRepo]] = {}  # repo_id -> commits main has left, by commit
        self._lock = threading.Lock()
        self._hash_cache: dict[tuple[Path, int, int], tuple[str, str | None]] = {}

    def add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Back to an honest, healthy hub: no faults, throttles, overrides or plain-mirror answers."""
        with self._lock:
            self.faults.clear()
            self.throttles.clear()
            self.overrides.clear()
        self.bandwidth = None
        self.plain_mirror = False

    def override_listing(self, repo_id: str, override: ListingOverride) -> ListingOverride:
        with self._lock:
            self.overrides[repo_id] = override
        return override

    def publish(self, repo_id: str, files: dict[str, bytes]) -> str:
        """Move the repo's ``main`` to a new commit: ``files`` written over the current ones. The commit
        ``main`` leaves stays served by its hash (its files copied under ``<root>/.commits``). Returns
        the new commit."""
        old = self.repo(repo_id)
        if old is None:
            raise ValueError(f"no repo {repo_id} in {self.root}")
        kept = self.root / ".commits" / repo_id / old.commit
        for f in old.files.values():
            (kept / f.path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f.local_path, kept / f.path)
        frozen = {path: replace(f, local_path=kept / path) for path, f in old.files.items()}
        with self._lock:
            self.history.setdefault(repo_id, {})[old.commit] = replace(old, files=frozen)
        write_repo(self.root, repo_id, files)
        return self.repo(repo_id).commit

    def rate_for(self, repo_id: str) -> float | None:
        """Bytes per second for bodies of ``repo_id`` (read per chunk, so a change applies mid-transfer)."""
        with self._lock:
            rates = [rate for pattern, rate in self.throttles.items() if fnmatch.fnmatch(repo_id, pattern)]
        return rates[0] if rates else self.bandwidth

    def take_fault(self, repo_id: str, path: str) -> Fault | None:
        """Consume one use of the first active fault matching this file."""
        with self._lock:
            for fault in self.faults:
                if fault.matches(repo_id, path) and (fault.times is None or fault.times > 0):
                    if fault.times is not None:
                        fault.times -= 1
                    self.stats.faults[(repo_id, path, fault.kind)] += 1
                    return fault
        return None

    def record(self, counter: Counter, key: object, amount: int = 1) -> None:
        with self._lock:
            counter[key] += amount

    def repo(self, repo_id: str) -> HubRepo | None:
        folder = self.root / repo_id
        if repo_id.count("/") != 1 or not folder.is_dir() or ".." in repo_id or repo_id.startswith("."):
            return None
        files: dict[str, HubFile] = {}
        for local in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = local.relative_to(folder).as_posix()
            stat = local.stat()
            key = (local, stat.st_size, stat.st_mtime_ns)
            if key not in self._hash_cache:
                self._hash_cache[key] = _hash_file(local, stat.st_size, is_lfs(rel, stat.st_size))
            blob_id, sha256 = self._hash_cache[key]
            files[rel] = HubFile(rel, stat.st_size, blob_id, sha256, local)
        listing = "\n".join(f"{f.path} {f.blob_id}" for f in files.values())
        commit = hashlib.sha1(f"{repo_id}\n{listing}".encode()).hexdigest()
        override = self.overrides.get(repo_id)
        if override is None:
            return HubRepo(repo_id, commit, files)
        for alias, target in override.aliases.items():
            files[alias] = replace(files[target], path=alias)
        return HubRepo(repo_id, override.commit or commit, files, override.fields)


_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/(?P<kind>revision|tree)/(?P<rest>.*))?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rest>.+)$")


class HubRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HubHTTPServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        """Stay quiet: tests read the stats, not an access log."""

    @property
    def state(self) -> HubState:
        return self.server.state

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def _dispatch(self, head: bool) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        if match := _API.match(path):
            self._api(match["repo"], match["kind"], match["rest"] or "", parse_qs(url.query))
        elif match := _RESOLVE.match(path):
            self._resolve(match["repo"], match["rest"], head)
        else:
            self._error(404, "NotFound", f"no route for {path}")

    # -- helpers -------------------------------------------------------------------------------

    def _error(self, status: int, code: str, message: str, extra: dict[str, str] | None = None) -> None:
        """Answer an error as the Hub does, or as a plain mirror does: 404 for what it lacks, no X-Error-*."""
        body = json.dumps({"error": message}).encode()
        plain = self.state.plain_mirror
        self.send_response(404 if plain and code.endswith("NotFound") else status)
        if not plain:
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authorized_repo(self, repo_id: str) -> HubRepo | None:
        """The repo if it exists and the caller may read it; otherwise answer the error and return None."""
        repo = self.state.repo(repo_id)
        if repo is None:
            self._error(401, "RepoNotFound", "Repository not found")
            return None
        if repo_id in self.state.gated:
            auth = self.headers.get("Authorization", "")
            token = auth.removeprefix("Bearer ").strip()
            if token not in self.state.tokens:
                self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to it.")
                return None
        return repo

    @staticmethod
    def _split_revision(repo: HubRepo, rest: str) -> tuple[str, str] | None:
        """Split ``{revision}/{path}`` where the revision is ``main`` or the commit (possibly URL-encoded)."""
        for revision in ("main", repo.commit):
            if rest == revision:
                return revision, ""
            if rest.startswith(revision + "/"):
                return revision, rest[len(revision) + 1 :]
        return None

    def _at_revision(self, repo: HubRepo, rest: str) -> tuple[HubRepo, tuple[str, str] | None]:
        """The repo at the revision ``rest`` starts with (``main``, its commit or one ``main`` has left)."""
        for at in (repo, *self.state.history.get(repo.repo_id, {}).values()):
            if split := self._split_revision(at, rest):
                return at, split
        return repo, None

    # -- API -----------------------------------------------------------------------------------

    def _api(self, repo_id: str, kind: str | None, rest: str, query: dict[str, list[str]]) -> None:
        repo = self._authorized_repo(repo_id)
        if repo is None:
            return
        self.state.record(self.state.stats.api_calls, repo_id)
        repo, split = self._at_revision(repo, rest) if kind else (repo, ("main", ""))
        if split is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rest.split('/')[0]}")
            return
        _, subpath = split
        if kind == "tree":
            self._json(self._tree(repo, subpath, query.get("recursive", ["false"])[0].lower() == "true"))
            return
        self._json(
            {
                "id": repo_id,
                "modelId": repo_id,
                "sha": repo.commit,
                "private": False,
                "gated": "auto" if repo_id in self.state.gated else False,
                "disabled": False,
                "siblings": [{"rfilename": name} for name in repo.files],
                "tags": [],
                "downloads": 0,
                "likes": 0,
            }
        )

    @staticmethod
    def _tree(repo: HubRepo, subpath: str, recursive: bool) -> list[dict[str, object]]:
        prefix = f"{subpath.strip('/')}/" if subpath.strip("/") else ""
        entries: list[dict[str, object]] = []
        folders: set[str] = set()
        for f in repo.files.values():
            if not f.path.startswith(prefix):
                continue
            rel_parts = f.path[len(prefix) :].split("/")
            for depth in range(1, len(rel_parts)):
                folders.add(prefix + "/".join(rel_parts[:depth]))
            if len(rel_parts) > 1 and not recursive:
                continue
            entry: dict[str, object] = {"type": "file", "oid": f.blob_id, "size": f.size, "path": f.path}
            if f.sha256:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
            entries.append(entry | repo.entry_fields.get(f.path, {}))
        for folder in sorted(folders):
            if recursive or "/" not in folder[len(prefix) :]:
                entries.append(
                    {"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0, "path": folder}
                )
        return entries

    # -- resolve -------------------------------------------------------------------------------

    def _resolve(self, repo_id: str, rest: str, head: bool) -> None:
        repo = self._authorized_repo(repo_id)
        if repo is None:
            return
        repo, split = self._at_revision(repo, rest)
        if split is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rest.split('/')[0]}")
            return
        _, path = split
        hub_file = repo.files.get(path)
        commit_header = {"X-Repo-Commit": repo.commit}
        if hub_file is None:
            self._error(404, "EntryNotFound", f'{path} does not exist on "main"', commit_header)
            return
        if head:
            self.state.record(self.state.stats.heads, (repo_id, path))
            self._send_file_headers(200, repo, hub_file, 0, hub_file.size)
            return
        fault = self.state.take_fault(repo_id, path)
        if fault is not None and fault.kind in ("429", "500"):
            extra = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            status = int(fault.kind)
            self._error(status, "TooManyRequests" if status == 429 else "InternalError", f"injected {status}", extra)
            return
        start, end = requested_range(self.headers.get("Range"), hub_file.size)
        self.state.record(self.state.stats.bodies, (repo_id, path))
        self._send_file_headers(206 if self.headers.get("Range") else 200, repo, hub_file, start, end)
        self._send_body(repo_id, hub_file, start, end, fault)

    def _send_file_headers(self, status: int, repo: HubRepo, f: HubFile, start: int, end: int) -> None:
        self.send_response(status)
        self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("ETag", f'"{f.etag}"')
        if f.sha256:
            self.send_header("X-Linked-Etag", f'"{f.sha256}"')
            self.send_header("X-Linked-Size", str(f.size))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{max(start, end - 1)}/{f.size}")
        self.end_headers()

    def _send_body(self, repo_id: str, f: HubFile, start: int, end: int, fault: Fault | None) -> None:
        key = (repo_id, f.path)
        if fault is None and self.state.rate_for(repo_id) is None:
            # Counted before sending: a client may read the whole body before this thread gets to count.
            self.state.record(self.state.stats.body_bytes, key, end - start)
            with f.local_path.open("rb") as source:
                if end > start:
                    self.connection.sendfile(source, start, end - start)
            return
        with f.local_path.open("rb") as source:
            fault_at = start + int((end - start) * fault.at) if fault else end
            position = start
            source.seek(start)
            while position < end:
                chunk = source.read(min(CHUNK_SIZE, end - position))
                if fault is not None and position <= fault_at < position + len(chunk):
                    split = fault_at - position
                    if fault.kind == "corrupt":
                        chunk = chunk[:split] + bytes([chunk[split] ^ 0xFF]) + chunk[split + 1 :]
                    else:
                        self._write(key, chunk[:split])
                        self._interrupt(fault)
                        return
                sent_at = time.monotonic()
                self._write(key, chunk)
                position += len(chunk)
                if rate := self.state.rate_for(repo_id):
                    time.sleep(max(0.0, len(chunk) / rate - (time.monotonic() - sent_at)))

    def _write(self, key: tuple[str, str], data: bytes) -> None:
        self.state.record(self.state.stats.body_bytes, key, len(data))
        self.wfile.write(data)

    def _interrupt(self, fault: Fault) -> None:
        """End a body early: at once for a drop, after ``stall_seconds`` of silence for a stall."""
        if fault.kind == "stall":
            self.server.stopping.wait(fault.stall_seconds)
        self.close_connection = True


class HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: HubState) -> None:
        self.state = state
        self.stopping = threading.Event()
        super().__init__(address, HubRequestHandler)


class LocalHub:
    """A running hub in a background thread: ``with LocalHub(root) as hub: hub.endpoint``."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        root: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        gated: set[str] | None = None,
        tokens: set[str] | None = None,
    ) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the test hub binds loopback only, not {host!r}")
        self.state = HubState(root, gated=gated, tokens=tokens)
        self._server = HubHTTPServer((host, port), self.state)
        self._thread = threading.Thread(target=self._server.serve_forever, name="candle-test-hub", daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def stats(self) -> HubStats:
        return self.state.stats

    def reset(self) -> None:
        """Forget faults, bandwidth cap and counters between tests."""
        self.state.clear_faults()
        self.state.stats = HubStats()

    def start(self) -> LocalHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_repo(root: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """Create (or overwrite) a repo of small files in a hub store."""
    folder = Path(root) / repo_id
    for rel, data in files.items():
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return folder


def write_random_file(path: Path, size: int, seed: int = 0) -> Path:
    """Write ``size`` pseudo-random bytes (deterministic per seed) without holding them in memory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    with path.open("wb") as f:
        remaining = size
        while remaining:
            piece = rng.randbytes(min(HASH_BLOCK, remaining))
            f.write(piece)
            remaining -= len(piece)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Serve a folder of repos over the Hugging Face Hub protocol on loopback."
    )
    parser.add_argument("root", type=Path, help="folder holding <namespace>/<name>/ repos")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    hub = LocalHub(args.root, host=args.host, port=args.port).start()
    print(hub.endpoint, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()


if __name__ == "__main__":
    main()
