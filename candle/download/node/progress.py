"""Live progress of downloads: per file, aggregated per model, with a recent transfer rate and ETA.

``FileProgress`` is told each chunk as it is written (``update``), by every connection of the
transfer, so bytes are counted where they are received, from the transfer's threads. Readers on the
event loop take consistent snapshots under a lock, as the typed records of ``candle.contracts``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from ..records import BlobSource, DownloadState, FileProgressRecord, FileState, RepoProgressRecord

_RATE_WINDOW_S = 5.0


class FileProgress:
    """Bytes received for one blob, shared by every request that waits on it."""

    def __init__(self, path: str, total: int) -> None:
        self.path = path
        self.total = total
        self.done = 0
        self.state: FileState = "queued"
        self.attempts = 0
        self.source: BlobSource | None = None  # where the bytes come from now
        self.upstream: str | None = None  # the peer's node id, for a peer or relay source
        self._samples: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def update(self, n: int) -> None:
        """Called per chunk written, from any of the transfer's connections."""
        now = time.monotonic()
        with self._lock:
            self.done = max(0, self.done + n)
            self._samples.append((now, self.done))
            while self._samples and now - self._samples[0][0] > _RATE_WINDOW_S:
                self._samples.popleft()

    def restart(self, done: int) -> None:
        """A new attempt starts with ``done`` bytes already on disk."""
        with self._lock:
            self.done = done
            self._samples.clear()
            self.attempts += 1

    def came_from(self, source: BlobSource, upstream: str | None = None) -> None:
        """The transfer (re)starts from ``source``: shown per node by ``candle status`` and ``/v1/models``."""
        self.source, self.upstream = source, upstream

    def rate(self) -> float:
        with self._lock:
            if len(self._samples) < 2 or self.state != "downloading":
                return 0.0
            (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
            now = time.monotonic()
            return (b1 - b0) / max(now - t0, t1 - t0, 1e-3)

    def record(self) -> FileProgressRecord:
        return FileProgressRecord(self.path, self.state, self.done, self.total, self.rate(), self.source, self.upstream)


@dataclass
class RepoProgress:
    """One model at one commit on this node: the union of what its requests need."""

    repo_id: str
    revision: str
    commit: str | None = None
    state: DownloadState = "resolving"
    error: str | None = None
    files: dict[str, FileProgress] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def record(self) -> RepoProgressRecord:
        files = tuple(f.record() for f in self.files.values())
        return RepoProgressRecord(self.repo_id, self.revision, self.commit, self.state, self.error, files)
