"""A blob's missing bytes over HTTP: byte ranges from one or several sources at once, each resumed
where it stopped, and a source that fails dropped.

One connection per file leaves most of a node's bandwidth unused wherever each connection is
capped (CDNs cap each stream, a peer's uplink or TCP over a long path caps one connection too), and
a checkpoint of a few huge shards is the normal case. So a blob written in pieces (larger than
``range_size``) is cut into ranges of that size, handed out in order to up to
``connections_per_file`` connections at once, spread over the sources given (the hub, or the peers
that have the blob), within the node's ``max_connections`` and its download budget
(``bandwidth``). Handing ranges out in order keeps the in-order hash (``prefix_hash.py``) close
behind: little is read back. A smaller blob is one range on one connection.

Each range is one GET with ``Range``: through huggingface_hub's HTTP session for the hub (its
client, its 429 handling with ``Retry-After``, its typed errors), through the node's own client for
peers (connecting from the node's peer address, so that a peer's slots per client address count
nodes simulated on one machine apart). A range that stops early goes back to the front of the
queue and resumes from its next byte, on the same source or another.

A peer is dropped at its first failure: a refused connection, one not accepted or answered within
``peer_timeout``, an HTTP error, a body cut short, a range other than the one asked for, bytes
past it. Its ranges go to the other sources; when none is left the transfer fails, and the caller
(``sourcing.py``) decides where to go next. The hub is retried with backoff (5xx, dropped or
stalled connections) up to ``max_attempts`` failures in a row without a byte; what retrying cannot
fix (not found, access denied) ends the transfer at once. Blocking: run it in a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import httpx2
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import hf_raise_for_status, http_stream_backoff

from ..config import DownloaderSettings
from ..records import BlobSource
from .pacing import TokenBucket
from .partial_file import Overrun, PartialFile, RangeWriter, Span
from .progress import FileProgress
from .redact import redact_url

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class Source:
    """Where bytes of a blob can be fetched: its URL, the headers it needs (a token: never shown), and
    what it is (``hub``, a ``peer``'s verified copy, a ``relay``'s growing one)."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    kind: BlobSource = "hub"

    @property
    def peer(self) -> bool:
        return self.kind != "hub"


@dataclass(frozen=True)
class Drop:
    """Why a source was dropped from a transfer; ``wrong``: it sent or announced bytes it should not have."""

    cause: str
    wrong: bool = False


class SourceError(Exception):
    """A source answered with something other than the range asked for."""

    def __init__(self, cause: str, wrong: bool = False) -> None:
        super().__init__(cause)
        self.cause = cause
        self.wrong = wrong


class NoSourceLeft(Exception):
    """Every source of the transfer was dropped; ``drop`` is why the last one was."""

    def __init__(self, drop: Drop, overrun: bool) -> None:
        super().__init__(drop.cause)
        self.drop = drop
        self.overrun = overrun


class _Stopped(Exception):
    """Another connection of the transfer ended it."""


class Links:
    """The node's connections for transfers: how many may be open at once, its download budget, the
    client that reaches peers, and counts for its metrics."""

    def __init__(self, settings: DownloaderSettings, local_address: str | None = None) -> None:
        self.settings = settings
        self._slots = threading.BoundedSemaphore(settings.max_connections)
        self.bucket = TokenBucket(settings.bandwidth) if settings.bandwidth else None
        self.peers = httpx2.Client(
            transport=httpx2.HTTPTransport(local_address=local_address),
            limits=httpx2.Limits(max_connections=None, max_keepalive_connections=settings.max_connections),
            timeout=None,
        )
        self._lock = threading.Lock()
        self.open = 0  # connections open now
        self.received: Counter[BlobSource] = Counter()  # bytes written into partial files, by source kind
        self.dropped: Counter[tuple[BlobSource, str]] = Counter()  # sources dropped mid-transfer: (kind, wrong|failed)
        self.read_back = 0  # bytes hashed from disk, having arrived ahead of a file's in-order prefix

    @contextlib.contextmanager
    def connection(self) -> Iterator[None]:
        with self._slots:
            with self._lock:
                self.open += 1
            try:
                yield
            finally:
                with self._lock:
                    self.open -= 1

    def count(self, kind: BlobSource, n: int) -> None:
        with self._lock:
            self.received[kind] += n

    def count_drop(self, kind: BlobSource, wrong: bool) -> None:
        with self._lock:
            self.dropped[(kind, "wrong" if wrong else "failed")] += 1

    def count_read_back(self, n: int) -> None:
        with self._lock:
            self.read_back += n

    def close(self) -> None:
        self.peers.close()


def plan(missing: list[Span], range_size: int | None) -> deque[Span]:
    """The ranges to fetch, in file order: each gap whole, or cut into ``range_size`` pieces."""
    pieces: deque[Span] = deque()
    for start, end in missing:
        step = range_size or end - start
        pieces.extend((at, min(at + step, end)) for at in range(start, end, step))
    return pieces


def fetch_missing(
    partial: PartialFile,
    sources: Sequence[Source],
    *,
    settings: DownloaderSettings,
    links: Links,
    progress: FileProgress,
    dropped: dict[str, Drop],
) -> None:
    """Write every byte ``partial`` lacks, from ``sources``; the ones dropped on the way land in ``dropped``.

    Raises ``NoSourceLeft`` once every source was dropped, huggingface_hub's error for what retrying
    cannot fix, and ``OSError`` for a local failure (a full disk).
    """
    pieces = plan(partial.missing(), settings.range_size if partial.pieces else None)
    if not pieces:
        return
    run = _Transfer(partial, list(sources), settings, links, progress, dropped, pieces)
    workers = min(settings.connections_per_file, len(pieces)) if partial.pieces else 1
    try:
        if workers == 1:
            run.work(0)
        else:
            threads = [
                threading.Thread(target=run.work, args=(i,), name=f"candle-range-{i}", daemon=True)
                for i in range(workers)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        # Ranges cut short keep what they wrote: the next transfer (another source) resumes each there.
        partial.save()
    if run.error is not None:
        raise run.error


class _Transfer:
    """The ranges of one blob and the connections working through them."""

    def __init__(
        self,
        partial: PartialFile,
        sources: list[Source],
        settings: DownloaderSettings,
        links: Links,
        progress: FileProgress,
        dropped: dict[str, Drop],
        pieces: deque[Span],
    ) -> None:
        self.partial = partial
        self.live = list(sources)
        self.settings = settings
        self.links = links
        self.progress = progress
        self.dropped = dropped
        self.pieces = pieces
        self.failures: Counter[str] = Counter()  # per source URL: failures in a row without a byte
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self._lock = threading.Lock()
        if not self.live:
            self.error = NoSourceLeft(Drop("no source to fetch from"), overrun=False)
            self.stop.set()

    def work(self, index: int) -> None:
        """One connection's loop: the next range, from the next source still live, until none is left."""
        while not self.stop.is_set():
            with self._lock:
                if not self.pieces or not self.live:
                    return
                start, end = self.pieces.popleft()
                source = self.live[index % len(self.live)]
            writer = self.partial.writer(source.url, start, end)
            try:
                with self.links.connection():
                    self._get(source, writer)
            except BaseException as e:
                with self._lock:
                    if writer.position < end:
                        self.pieces.appendleft((writer.position, end))
                if not isinstance(e, _Stopped):
                    self._failed(source, e, progressed=writer.position > start)
                continue
            self.partial.save()
            with self._lock:
                self.failures[source.url] = 0

    def _get(self, source: Source, writer: RangeWriter) -> None:
        headers = {**source.headers, "Range": f"bytes={writer.position}-{writer.end - 1}"}
        if source.peer:
            timeout = httpx2.Timeout(self.settings.peer_timeout)
            with self.links.peers.stream("GET", source.url, headers=headers, timeout=timeout) as response:
                wait_longer_for_the_body(response, self.settings.stall_timeout)
                self._receive(response, source, writer)
            return
        with http_stream_backoff(
            "GET",
            source.url,
            headers=headers,
            timeout=self.settings.stall_timeout,
            retry_on_exceptions=(),
            retry_on_status_codes=(408, 429),
            max_retries=self.settings.max_attempts,
        ) as response:
            self._receive(response, source, writer)

    def _receive(self, response: httpx2.Response, source: Source, writer: RangeWriter) -> None:
        hf_raise_for_status(response)
        check_range(response, writer.position, writer.end, self.partial.size)
        whole = response.status_code == 200  # a range from the file's start, answered with the whole file
        for chunk in response.iter_bytes(self.settings.chunk_size):
            if self.stop.is_set():
                raise _Stopped
            if whole:
                chunk = chunk[: writer.end - writer.position]
            if self.links.bucket is not None:
                self.links.bucket.take(len(chunk))
            writer.write(chunk)
            self.progress.update(len(chunk))
            self.links.count(source.kind, len(chunk))
            if whole and writer.position == writer.end:
                break
        if writer.position < writer.end:
            raise SourceError(f"the body ended at byte {writer.position:,} of {writer.end:,}")

    def _failed(self, source: Source, error: BaseException, progressed: bool) -> None:
        """Drop the source, retry it after a pause (the hub's passing failures), or end the transfer."""
        if isinstance(error, Overrun):
            self._drop(source, Drop(f"more than the range asked for ({error})", wrong=True), overrun=True)
        elif isinstance(error, SourceError):
            self._drop(source, Drop(error.cause, error.wrong))
        elif isinstance(error, HfHubHTTPError):
            status = error.response.status_code if error.response is not None else None
            if source.peer:
                self._drop(source, Drop(f"HTTP {status}"))
            elif status in RETRYABLE_STATUS:
                self._again(source, f"HTTP {status}", progressed)
            else:
                self._end(error)
        elif isinstance(error, httpx2.TransportError):
            if source.peer:
                self._drop(source, Drop(type(error).__name__))
            else:
                self._again(source, type(error).__name__, progressed)
        else:
            self._end(error)

    def _again(self, source: Source, cause: str, progressed: bool) -> None:
        with self._lock:
            if progressed:
                self.failures[source.url] = 0
            self.failures[source.url] += 1
            failures = self.failures[source.url]
        if failures >= self.settings.max_attempts:
            self._drop(source, Drop(f"{cause} after {failures} attempts"))
            return
        delay = self.settings.backoff(failures)
        logger.warning(
            "%s: %s, retrying in %.1fs (attempt %d/%d)",
            redact_url(source.url),
            cause,
            delay,
            failures + 1,
            self.settings.max_attempts,
        )
        self.stop.wait(delay)

    def _drop(self, source: Source, drop: Drop, overrun: bool = False) -> None:
        with self._lock:
            if source not in self.live:
                return
            self.live.remove(source)
            self.dropped[source.url] = drop
            if not self.live and self.error is None:
                self.error = NoSourceLeft(drop, overrun)
                self.stop.set()
        self.links.count_drop(source.kind, drop.wrong)
        if self.live:
            logger.warning("%s: dropped (%s); its ranges go to the other sources", redact_url(source.url), drop.cause)

    def _end(self, error: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = error
        self.stop.set()


def check_range(response: httpx2.Response, start: int, end: int, size: int) -> None:
    """Refuse an answer that is not bytes ``[start, end)`` of a ``size``-byte file, before reading its body.

    A 200 (a server that ignores ``Range``) is the whole file: usable for a range from its start.
    """
    length = response.headers.get("Content-Length")
    if response.status_code == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
        if match is None or int(match[1]) != start:
            raise SourceError(f"answered {response.headers.get('Content-Range')!r} to a range from byte {start:,}")
        if match[3] != "*" and int(match[3]) != size:
            raise SourceError(f"its file has {int(match[3]):,} bytes, the listing {size:,}", wrong=True)
        if int(match[2]) + 1 > end or (length is not None and int(length) > end - start):
            raise Overrun(f"announced {length} bytes for a range of {end - start:,}")
        if int(match[2]) + 1 < end:
            raise SourceError(f"answered a range that ends at byte {int(match[2]) + 1:,}, not {end:,}")
    elif response.status_code == 200:
        if start != 0:
            raise SourceError("ignores Range")
        if length is not None and int(length) > size:
            raise Overrun(f"announced {int(length):,} bytes for a file of {size:,}")
    else:
        raise SourceError(f"HTTP {response.status_code}")


def wait_longer_for_the_body(response: httpx2.Response, read_timeout_s: float) -> None:
    """A peer answers at once (its head, within ``peer_timeout``), but a relay may then wait on its own
    upstream for the next bytes: wait up to ``read_timeout_s`` for each of those.

    httpx (httpcore) reads a request's time-outs from its ``timeout`` extension when the body is first
    read, so changing it between the head and the body applies to the body; tests/test_ranges.py
    fails loudly if a release stops doing so.
    """
    timeouts = response.request.extensions.get("timeout")
    if isinstance(timeouts, dict):
        timeouts["read"] = read_timeout_s
