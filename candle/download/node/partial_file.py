"""A transfer's partial file: bytes written at their offsets, never past the listed size, each range
recorded with its source, and hashed in order as they arrive.

A large blob arrives as several byte ranges at once (from the hub, from several peers), so its
partial file is written in place, out of order. ``PartialFile`` is that file for one transfer (no
other writer ever opens its name): ``writer`` hands each range's connection a ``RangeWriter``, which
refuses a byte past the range's end by raising ``Overrun`` (a hostile or broken source cannot fill
the disk, and is to blame), records who wrote what in the ``Provenance``, and feeds the file's
``PrefixHash``, so that once the last byte is written the digest is known without reading the file
again (only bytes that arrived ahead of the in-order prefix are read back).

A blob's bytes may come from several sources (ranges from several peers; a peer that dies mid-blob,
then another, then the hub), and the checksum covers only the whole blob. ``Provenance`` records
which source wrote which byte range, so a mismatch is blamed on the source that sent the wrong
bytes, not on the one that happened to write the last: when one source wrote the whole blob, it is
to blame; when several did, none is trusted or blamed yet, the partial is set aside, a whole copy
is fetched from one source, and once that copy verifies, exactly the sources whose ranges differ
from it are blamed.

A file written in pieces keeps a small record of its written ranges beside it (``<partial>.ranges``,
written before any byte, after each piece, and when a transfer ends with what its cut ranges hold):
a downloader killed mid-blob leaves holes, which read as zeros, and its successor resumes only the
ranges the record lists; the next transfer of a live one (another source) resumes each cut range
at its next byte. A file without one (one connection in order, or huggingface_hub's own
``<etag>.incomplete``) holds its first ``size`` bytes.
"""

from __future__ import annotations

import bisect
import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .integrity import Fingerprint, new_hasher
from .listing import RemoteFile
from .prefix_hash import PrefixHash

_COMPARE_BLOCK = 8 * 1024 * 1024
Span = tuple[int, int]  # bytes [start, end)


class Overrun(Exception):
    """The source sent (or announced) bytes past the end of its range; none of them was written."""


@dataclass(frozen=True)
class Written:
    """Bytes ``[start, end)`` of the partial file came from ``source`` (``None``: not known)."""

    start: int
    end: int
    source: str | None


def _merged(spans: list[Span]) -> list[Span]:
    merged: list[Span] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


class Provenance:
    """Which source wrote which bytes of one blob's partial file, across its attempts and sources.

    Thread-safe: every connection of a transfer records its writes here, and the node's peer server
    reads how far the written bytes reach to relay them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ranges: list[Written] = []  # sorted by start, disjoint
        self.suspect: tuple[Path, list[Written]] | None = None  # a partial set aside, and its record
        self.generation = 0  # bumped whenever the file is started afresh (a relay then stops reading it)

    def restart(self, spans: list[Span]) -> None:
        """The file holds ``spans`` of bytes from an unknown source (a dead writer's), and nothing else."""
        with self._lock:
            self.ranges = [Written(start, end, None) for start, end in _merged(spans) if start < end]

    def drop(self) -> None:
        """The file is gone: a new one starts empty."""
        with self._lock:
            self.ranges = []
            self.generation += 1

    def wrote(self, source: str, start: int, n: int) -> None:
        end = start + n
        with self._lock:
            starts = [r.start for r in self.ranges]
            i = bisect.bisect_right(starts, start)
            grows = i and self.ranges[i - 1].end == start and self.ranges[i - 1].source == source
            if grows and (i == len(self.ranges) or self.ranges[i].start >= end):  # the usual case
                self.ranges[i - 1] = Written(self.ranges[i - 1].start, end, source)
                return
            kept = []
            for r in self.ranges:
                if r.end <= start or r.start >= end:
                    kept.append(r)
                    continue
                if r.start < start:
                    kept.append(Written(r.start, start, r.source))
                if r.end > end:
                    kept.append(Written(end, r.end, r.source))
            kept.append(Written(start, end, source))
            kept.sort(key=lambda r: r.start)
            joined: list[Written] = []
            for r in kept:
                if joined and joined[-1].end == r.start and joined[-1].source == r.source:
                    joined[-1] = Written(joined[-1].start, r.end, r.source)
                else:
                    joined.append(r)
            self.ranges = joined

    def covered(self) -> list[Span]:
        """The written bytes, whoever wrote them."""
        with self._lock:
            return _merged([(r.start, r.end) for r in self.ranges])

    def missing(self, size: int) -> list[Span]:
        gaps, position = [], 0
        for start, end in self.covered():
            if start > position:
                gaps.append((position, start))
            position = max(position, end)
        if position < size:
            gaps.append((position, size))
        return gaps

    def done(self) -> int:
        return sum(end - start for start, end in self.covered())

    def run_end(self, position: int) -> int:
        """Where the written bytes from ``position`` on stop (``position`` itself: none written there)."""
        for start, end in self.covered():
            if start <= position < end:
                return end
        return position

    def writers(self) -> set[str | None]:
        with self._lock:
            return {r.source for r in self.ranges}

    def set_aside(self, partial: Path) -> None:
        """Keep ``partial`` (wrong as a whole, written by several sources) until a verified copy can
        tell which of them sent wrong bytes; the transfer starts over. One is kept at a time: bytes
        of a later mix are dropped without blaming anyone."""
        with self._lock:
            if self.suspect is None:
                suspect = partial.with_name(partial.name.removesuffix(".incomplete") + ".suspect")
                os.replace(partial, suspect)
                self.suspect = (suspect, self.ranges)
            else:
                partial.unlink(missing_ok=True)
            self.ranges = []
            self.generation += 1

    def blame(self, verified: Path) -> set[str]:
        """The sources whose bytes in the set-aside partial differ from ``verified`` (the blob, checked);
        the partial is removed. Blocking (reads both files)."""
        if self.suspect is None:
            return set()
        suspect, ranges = self.suspect
        blamed = set()
        try:
            with suspect.open("rb") as theirs, verified.open("rb") as right:
                for r in ranges:
                    if r.source is not None and r.source not in blamed and _differ(theirs, right, r):
                        blamed.add(r.source)
        finally:
            self.discard()
        return blamed

    def discard(self) -> None:
        """Remove the set-aside partial, if any (the transfer is over)."""
        if self.suspect is not None:
            self.suspect[0].unlink(missing_ok=True)
            self.suspect = None


def _differ(theirs: BinaryIO, right: BinaryIO, r: Written) -> bool:
    for start in range(r.start, r.end, _COMPARE_BLOCK):
        n = min(_COMPARE_BLOCK, r.end - start)
        theirs.seek(start)
        right.seek(start)
        if theirs.read(n) != right.read(n):
            return True
    return False


def ranges_record(partial: Path) -> Path:
    """The record of a partial file's written ranges, beside it."""
    return partial.with_name(partial.name + ".ranges")


def written_spans(partial: Path, size: int) -> list[Span] | None:
    """The bytes of ``f`` a partial file holds, as its record lists them (or its first bytes, without
    one); ``None`` when it cannot be trusted at all (larger than the file, or an unreadable record)."""
    try:
        on_disk = partial.stat().st_size
    except FileNotFoundError:
        return []
    try:
        text = ranges_record(partial).read_text()
    except FileNotFoundError:
        if on_disk > size:
            return None
        return [(0, on_disk)] if on_disk else []
    try:
        spans = [(int(a), int(b)) for a, b in json.loads(text)]
    except (ValueError, TypeError):
        return None
    if not all(0 <= a < b <= size for a, b in spans):
        return None
    return [(a, min(b, on_disk)) for a, b in _merged(spans) if a < on_disk]


def move_partial(source: Path, target: Path) -> None:
    """Rename a partial file and its record of written ranges (if it has one)."""
    if ranges_record(source).exists():
        os.replace(ranges_record(source), ranges_record(target))
    os.replace(source, target)


def remove_partial(partial: Path) -> None:
    partial.unlink(missing_ok=True)
    ranges_record(partial).unlink(missing_ok=True)


class PartialFile:
    """One transfer's file of blob ``f``: opened (or resumed) under the blob's lock, written at any offset.

    It lasts as long as the transfer, over its attempts and sources: what a source wrote stays
    recorded until the file is set aside or discarded. ``pieces``: it is written in several ranges
    at once (out of order), so it keeps a record of its written ranges for a successor.
    """

    def __init__(self, path: Path, f: RemoteFile, *, pieces: bool = False) -> None:
        self.path = path
        self.file = f
        self.pieces = pieces
        self.provenance = Provenance()
        self._fd: int | None = None
        self._hash: PrefixHash | None = None
        self._read_back = 0  # by the hashes of files closed before
        self._record_lock = threading.Lock()

    @property
    def size(self) -> int:
        return self.file.size

    @property
    def read_back(self) -> int:
        """Bytes hashed from disk so far (they arrived ahead of the in-order prefix, or were adopted)."""
        return self._read_back + (self._hash.read_back if self._hash is not None else 0)

    def open(self) -> None:
        """Go on with the file as it is: the bytes already in it (a dead writer's, or an earlier
        attempt's) stay, and are hashed (read back) once the prefix reaches them."""
        if self._fd is not None:
            return
        spans = written_spans(self.path, self.size)
        if spans is None:  # nothing in it can be trusted: start over
            remove_partial(self.path)
            spans = []
        self.pieces = self.pieces or ranges_record(self.path).exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self._fd, self._hash = fd, PrefixHash(new_hasher(self.file), fd)
        if self.provenance.covered() != _merged(spans):  # else: an earlier attempt's, whose sources are known
            self.provenance.restart(spans)
        for start, end in self.provenance.covered():
            self._hash.on_disk(start, end)
        if self.pieces:
            self.save()

    def missing(self) -> list[Span]:
        return self.provenance.missing(self.size)

    def done(self) -> int:
        return self.provenance.done()

    def writer(self, source: str, start: int, end: int) -> RangeWriter:
        if self._fd is None or self._hash is None:
            raise RuntimeError("open the partial file first")
        return RangeWriter(self._fd, self._hash, self.provenance, source, start, end)

    def save(self) -> None:
        """Record the written ranges (atomically): a successor resumes no more than this says."""
        if not self.pieces:
            return
        record = ranges_record(self.path)
        with self._record_lock:
            fd, tmp = tempfile.mkstemp(dir=record.parent, prefix=f".{record.name}.")
            with os.fdopen(fd, "w") as out:
                json.dump(self.provenance.covered(), out)
            os.replace(tmp, record)

    def finish(self) -> tuple[str, Fingerprint]:
        """Every byte is written: flush the file to the disk; its digest and what it is on disk now."""
        if self._fd is None or self._hash is None:
            raise RuntimeError("open the partial file first")
        os.fsync(self._fd)
        fingerprint = Fingerprint.of(os.fstat(self._fd))
        return self._hash.hexdigest(self.size), fingerprint

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._read_back = self.read_back
            self._fd, self._hash = None, None

    def published(self) -> None:
        """The file became the blob: its record of ranges has no more use."""
        self.close()
        ranges_record(self.path).unlink(missing_ok=True)

    def discard(self) -> None:
        """Its bytes are of no use: remove them; the transfer starts over."""
        self.close()
        remove_partial(self.path)
        self.provenance.drop()

    def set_aside(self) -> None:
        """Keep its bytes aside to judge their sources once a whole copy verifies (see ``Provenance``)."""
        self.close()
        ranges_record(self.path).unlink(missing_ok=True)
        self.provenance.set_aside(self.path)


class RangeWriter:
    """What one connection writes: bytes ``[start, end)`` of the partial file, in order, as ``source``.

    ``position`` is where its next byte goes: after a dropped connection, the range resumes there.
    """

    def __init__(self, fd: int, digest: PrefixHash, provenance: Provenance, source: str, start: int, end: int) -> None:
        self._fd = fd
        self._hash = digest
        self.provenance = provenance
        self.source = source
        self.start = self.position = start
        self.end = end

    def write(self, data: bytes | memoryview) -> int:
        if self.position + len(data) > self.end:
            raise Overrun(f"{self.position + len(data):,} > {self.end:,} bytes")
        view, written = memoryview(data), 0
        while written < len(view):
            written += os.pwrite(self._fd, view[written:], self.position + written)
        self.provenance.wrote(self.source, self.position, written)
        self._hash.wrote(self.position, view)
        self.position += written
        return written
