"""A Hugging Face Hub look-alike on loopback, for tests, benchmarks and the offline demo.

It serves a folder of repos (``<root>/<namespace>/<name>/...``, one revision per repo) over the
endpoints huggingface_hub calls: revision info, the recursive tree listing, and ``HEAD``/``GET`` on
``resolve`` with the headers the client relies on (``X-Repo-Commit``, ``ETag``, ``X-Linked-Etag``,
``X-Linked-Size``, ``Content-Length``, ``Range``). Faults can be switched on per test (a dropped
connection mid-body, corrupted bytes, 429 with ``Retry-After``, 500, 503, a stall, a body held at a
point until the test releases it, bytes past the file's end) and a rate cap set per connection (as
CDNs cap each stream, which is why one connection per file leaves a node's bandwidth unused), and
it counts the requests and body bytes it served, the bytes each connection sent per quarter second,
and the faults that fired per file, so tests can assert how many transfers really happened, that
the cap held and that the failures they set up really occurred. For tests of
what candle trusts, a repo's listing can be made hostile (``ListingOverride``: another commit,
extra paths, rewritten tree fields), and the hub can answer like a plain mirror (bare 404s
without the Hub's ``X-Error-Code``). A repo's ``main`` can move to a new commit
(``HubState.publish``) while the commits it left stay served by their hashes, as on the Hub. It
binds loopback only.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import itertools
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
from urllib.parse import parse_qs, unquote, urlencode, urlsplit, urlunsplit

from candle.download.node.pacing import TokenBucket

# The extensions the Hub's default .gitattributes stores in LFS; bigger files go to LFS as well.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".model")
LFS_MIN_SIZE = 10 * 1024 * 1024
CHUNK_SIZE = 256 * 1024
HASH_BLOCK = 8 * 1024 * 1024
CONNECTION_SLOT_S = 0.25  # the interval of the per-connection accounting (``HubStats.connection_bytes``)
_CONNECTION_IDS = itertools.count(1)

FaultKind = Literal["drop", "corrupt", "429", "500", "503", "stall", "hold", "overflow"]
STATUS_FAULTS = ("429", "500", "503")  # the response is an error instead of the file


@dataclass(eq=False)
class Fault:
    """One injected failure on the ``GET`` responses for files matching ``path`` (a glob).

    ``times`` is how many matching responses it spoils (``None``: every one), after letting the
    first ``skip`` through. A status fault (429, 500, 503) answers instead of the file; body faults
    of one response combine. ``at`` is the fraction of the body sent before a drop, a stall, a hold
    or the corrupted byte. ``hold`` pauses the body there until the test calls ``release`` (``held``
    is set once a body waits): a deterministic "while this transfer is still running". ``overflow``
    sends ``extra`` bytes past the file's end, announced in ``Content-Length`` as a lying source
    would.
    """

    kind: FaultKind
    path: str = "*"
    repo: str = "*"
    times: int | None = 1
    at: float = 0.5
    retry_after: int | None = 2
    stall_seconds: float = 60.0
    skip: int = 0
    extra: int = 64 * 1024 * 1024
    held: threading.Event = field(default_factory=threading.Event, repr=False)
    released: threading.Event = field(default_factory=threading.Event, repr=False)

    def matches(self, repo_id: str, path: str) -> bool:
        return fnmatch.fnmatch(repo_id, self.repo) and fnmatch.fnmatch(path, self.path)

    def release(self) -> None:
        """Let a held body (and any later one) go on."""
        self.released.set()


@dataclass
class ListingOverride:
    """What a hostile (or broken) mirror claims about one repo, served through the real endpoints.

    ``commit`` replaces the repo's sha in ``repo_info``, ``X-Repo-Commit`` and the URLs it answers;
    ``aliases`` lists extra paths, each served with the bytes and checksums of an existing file;
    ``fields`` replaces fields of a path's tree entry (``oid``, ``size``, ``lfs``) verbatim.
    ``page_size`` serves the tree in pages linked by ``Link: <...>; rel="next"``, as the Hub does;
    with ``endless`` the last page links to another empty page, forever.
    """

    commit: str | None = None
    aliases: dict[str, str] = field(default_factory=dict)  # listed path -> existing file it serves
    fields: dict[str, dict[str, object]] = field(default_factory=dict)  # listed path -> entry fields
    page_size: int | None = None
    endless: bool = False


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
    faults: Counter = field(default_factory=Counter)  # faults that fired, keyed by (repo_id, path, kind)
    # Body bytes by (connection number, slot): the slot is ``time.monotonic() // CONNECTION_SLOT_S`` when
    # a write began, so a test can check each connection's rate cap from the hub's own books.
    connection_bytes: Counter = field(default_factory=Counter)

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
        self.bandwidth: float | None = None  # bytes per second per connection, None = unlimited
        self.throttles: dict[str, float] = {}  # repo glob -> bytes per second per connection, overrides `bandwidth`
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
            for fault in self.faults:
                fault.release()  # no body stays held by a fault that is gone
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
        new = self.repo(repo_id)
        assert new is not None, repo_id  # written just now
        return new.commit

    def rate_for(self, repo_id: str) -> float | None:
        """Bytes per second per connection for bodies of ``repo_id`` (read per chunk, so a change applies
        mid-transfer)."""
        with self._lock:
            rates = [rate for pattern, rate in self.throttles.items() if fnmatch.fnmatch(repo_id, pattern)]
        return rates[0] if rates else self.bandwidth

    def take_faults(self, repo_id: str, path: str) -> list[Fault]:
        """Consume one use of the faults for this response: the first status fault alone, or the body faults."""
        taken: list[Fault] = []
        with self._lock:
            for fault in self.faults:
                if not fault.matches(repo_id, path) or fault.times == 0:
                    continue
                if fault.skip > 0:
                    fault.skip -= 1
                    continue
                if fault.kind in STATUS_FAULTS and taken:
                    continue  # a body is already spoiled: the status fault waits for another response
                if fault.times is not None:
                    fault.times -= 1
                taken.append(fault)
                if fault.kind in STATUS_FAULTS:
                    break
        return taken

    def fired(self, repo_id: str, path: str, fault: Fault) -> None:
        """Count a fault when it takes effect, not when it is set up or taken: a client that hangs
        up before the body reaches it never sees it."""
        self.record(self.stats.faults, (repo_id, path, fault.kind))

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


_STATUS_CODES = {"429": "TooManyRequests", "500": "InternalError", "503": "ServiceUnavailable"}
_ORDER = {"corrupt": 0, "hold": 1, "drop": 2, "stall": 2}  # faults striking the same byte

_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/(?P<kind>revision|tree)/(?P<rest>.*))?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rest>.+)$")


class HubRequestHandler(BaseHTTPRequestHandler):
    """One connection (its requests, kept alive, one after another), paced by a budget of its own."""

    protocol_version = "HTTP/1.1"
    server: HubHTTPServer

    def setup(self) -> None:
        super().setup()
        self.connection_id = next(_CONNECTION_IDS)
        self.pace: TokenBucket | None = None  # this connection's budget, at the rate it was made for

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

    def _json(self, payload: object, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
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
            entries = self._tree(repo, subpath, query.get("recursive", ["false"])[0].lower() == "true")
            override = self.state.overrides.get(repo_id)
            if override is None or override.page_size is None:
                self._json(entries)
                return
            start = int(query.get("cursor", ["0"])[0])
            end = start + override.page_size
            more = end < len(entries) or override.endless
            following = urlsplit(self.path)._replace(query=urlencode({**query, "cursor": end}, doseq=True))
            link = f'<http://{self.headers["Host"]}{urlunsplit(following)}>; rel="next"' if more else None
            self._json(entries[start:end], {"Link": link} if link else None)
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
        faults = self.state.take_faults(repo_id, path)
        if faults and faults[0].kind in STATUS_FAULTS:
            fault = faults[0]
            extra = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            self.state.fired(repo_id, path, fault)
            self._error(int(fault.kind), _STATUS_CODES[fault.kind], f"injected {fault.kind}", extra)
            return
        start, end = requested_range(self.headers.get("Range"), hub_file.size)
        overflow = sum(fault.extra for fault in faults if fault.kind == "overflow")
        for fault in faults:
            if fault.kind == "overflow":  # fired once announced: a careful client hangs up at the header
                self.state.fired(repo_id, path, fault)
        self.state.record(self.state.stats.bodies, (repo_id, path))
        self._send_file_headers(206 if self.headers.get("Range") else 200, repo, hub_file, start, end, overflow)
        self._send_body(repo_id, hub_file, start, end, faults)

    def _send_file_headers(
        self, status: int, repo: HubRepo, f: HubFile, start: int, end: int, overflow: int = 0
    ) -> None:
        self.send_response(status)
        self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("ETag", f'"{f.etag}"')
        if f.sha256:
            self.send_header("X-Linked-Etag", f'"{f.sha256}"')
            self.send_header("X-Linked-Size", str(f.size))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + overflow))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{max(start, end - 1)}/{f.size}")
        self.end_headers()

    def _send_body(self, repo_id: str, f: HubFile, start: int, end: int, faults: list[Fault]) -> None:
        key = (repo_id, f.path)
        if not faults and self.state.rate_for(repo_id) is None:
            # Counted before sending: a client may read the whole body before this thread gets to count.
            self._count(key, end - start)
            with f.local_path.open("rb") as source:
                if end > start:
                    self.connection.sendfile(source, start, end - start)
            return
        # Where each fault strikes, in body order (a hold before a drop at the same byte).
        marks = sorted(
            (
                (start + int((end - start) * fault.at), _ORDER[fault.kind], n)
                for n, fault in enumerate(faults)
                if fault.kind != "overflow"
            ),
            reverse=True,
        )
        with f.local_path.open("rb") as source:
            position = start
            source.seek(start)
            while position < end:
                corrupt = None
                while marks and marks[-1][0] <= position:
                    fault = faults[marks.pop()[2]]
                    if fault.kind in ("drop", "stall"):
                        self.state.fired(repo_id, f.path, fault)
                        self._interrupt(fault)
                        return
                    if fault.kind == "hold":
                        self.state.fired(repo_id, f.path, fault)
                        fault.held.set()
                        while not fault.released.wait(0.05) and not self.server.stopping.is_set():
                            pass
                    elif fault.kind == "corrupt":
                        corrupt = fault
                limit = min(end, position + CHUNK_SIZE, marks[-1][0] if marks else end)
                chunk = source.read(limit - position)
                if corrupt is not None:
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                    self.state.fired(repo_id, f.path, corrupt)
                self._paced_write(key, repo_id, chunk)
                position += len(chunk)
        for fault in faults:
            if fault.kind == "overflow":
                for sent in range(0, fault.extra, CHUNK_SIZE):
                    self._paced_write(key, repo_id, bytes(min(CHUNK_SIZE, fault.extra - sent)))

    def _paced_write(self, key: tuple[str, str], repo_id: str, data: bytes) -> None:
        rate = self.state.rate_for(repo_id)
        if rate is None:
            self._write(key, data)
            return
        if self.pace is None or self.pace.bytes_per_s != rate:
            self.pace = TokenBucket(rate)
        view = memoryview(data)
        for at in range(0, len(data), self.pace.chunk):
            piece = view[at : at + self.pace.chunk]
            self.pace.take(len(piece))
            self._write(key, piece)

    def _write(self, key: tuple[str, str], data: bytes | memoryview) -> None:
        self._count(key, len(data))
        self.wfile.write(data)

    def _count(self, key: tuple[str, str], n: int) -> None:
        self.state.record(self.state.stats.body_bytes, key, n)
        slot = int(time.monotonic() // CONNECTION_SLOT_S)
        self.state.record(self.state.stats.connection_bytes, (self.connection_id, slot), n)

    def _interrupt(self, fault: Fault) -> None:
        """End a body early: at once for a drop, after ``stall_seconds`` of silence for a stall."""
        if fault.kind == "stall":
            self.server.stopping.wait(fault.stall_seconds)
        self.close_connection = True


class HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the listen backlog: clients opening many connections at once are queued, not dropped

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
        return f"http://{host!s}:{port}"

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
        self._server.stopping.set()  # held and stalled bodies end
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
    parser.add_argument(
        "--connection-rate-mb", type=float, default=None, help="cap each connection at this many MiB/s (as CDNs do)"
    )
    args = parser.parse_args()
    hub = LocalHub(args.root, host=args.host, port=args.port).start()
    if args.connection_rate_mb:
        hub.state.bandwidth = args.connection_rate_mb * 1024 * 1024
    print(hub.endpoint, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()


if __name__ == "__main__":
    main()
