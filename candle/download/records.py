"""Download progress as records: what a node's downloader reports, and what the CLI, the jobs, the
metrics and the gateway's model status read (frozen, so they cross Ray calls as plain values)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

FileState = Literal["queued", "downloading", "done", "failed"]
DownloadState = Literal["resolving", "downloading", "done", "failed"]
# Where a blob's bytes come from: the hub, a peer's verified copy, a peer still receiving it (a
# relay), a shared cache another node filled, or this node's own cache.
BlobSource = Literal["hub", "peer", "relay", "shared", "cache"]


class _Totals:
    """Bytes done and total, rate and ETA of something made of ``parts`` (files, or nodes)."""

    @property
    def parts(self) -> tuple[Any, ...]:
        raise NotImplementedError

    @property
    def bytes_done(self) -> int:
        return sum(part.bytes_done for part in self.parts)

    @property
    def bytes_total(self) -> int:
        return sum(part.bytes_total for part in self.parts)

    @property
    def rate(self) -> float:
        return sum(part.rate for part in self.parts)

    @property
    def eta_s(self) -> float | None:
        rate = self.rate
        return max(0, self.bytes_total - self.bytes_done) / rate if rate > 0 else None


@dataclass(frozen=True)
class FileProgressRecord:
    path: str
    state: FileState
    bytes_done: int
    bytes_total: int
    rate: float  # bytes/s over the last few seconds
    source: BlobSource | None = None  # None: not started
    upstream: str | None = None  # the node id it copies from (peer or relay)


@dataclass(frozen=True)
class SourceRate:
    source: BlobSource
    upstream: str | None  # the node copied from (peer or relay)
    rate: float


@dataclass(frozen=True)
class RepoProgressRecord(_Totals):
    """One model at one revision on one node, as its downloader sees it now."""

    repo_id: str
    revision: str
    commit: str | None
    state: DownloadState
    error: str | None
    files: tuple[FileProgressRecord, ...] = ()

    @property
    def parts(self) -> tuple[FileProgressRecord, ...]:
        return self.files

    @property
    def fraction(self) -> float:
        return self.bytes_done / self.bytes_total if self.bytes_total else (1.0 if self.state == "done" else 0.0)

    @property
    def sources(self) -> tuple[SourceRate, ...]:
        """Where the bytes in flight come from now: each (source, upstream node) once, with its rate."""
        rates: dict[tuple[BlobSource, str | None], float] = {}
        for f in self.files:
            if f.state == "downloading" and f.source is not None:
                rates[(f.source, f.upstream)] = rates.get((f.source, f.upstream), 0.0) + f.rate
        return tuple(SourceRate(source, upstream, rate) for (source, upstream), rate in rates.items())


@dataclass(frozen=True)
class ModelProgress(_Totals):
    """One model across the nodes fetching it: ``(node id, that node's record)`` pairs."""

    nodes: tuple[tuple[str, RepoProgressRecord], ...]

    @property
    def parts(self) -> tuple[RepoProgressRecord, ...]:
        return tuple(record for _, record in self.nodes)

    @property
    def in_flight(self) -> bool:
        return any(record.state in ("resolving", "downloading") for record in self.parts)
