"""The checksum of a file whose bytes arrive in any order, computed in order as they arrive.

sha256 (and the git blob sha1) is a chain: byte ``n`` can only be hashed after bytes ``0..n-1``, and
there is no way to hash ranges apart and combine them into the file's digest. So the file's bytes
are hashed as one growing prefix. Bytes written right at its end are hashed from the writer's own
buffer, as they go to disk; bytes written further on (another range's connection) wait on disk, and
once the prefix reaches them they are read back and hashed. Only what arrived ahead of the prefix
is ever read back (counted in ``read_back``): one connection in order reads nothing back, and
ranges handed out in order keep the prefix, and what waits past it, a few ranges long.

Several writer threads call ``wrote``; one at a time advances the prefix (hashing, and reading
back what is there), without holding the lock while it hashes, so the others keep writing.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import threading

_READ_BLOCK = 8 * 1024 * 1024


class PrefixHash:
    """``hasher`` over the file open at ``fd`` (for reading), fed in order as bytes reach the disk."""

    def __init__(self, hasher: hashlib._Hash, fd: int) -> None:
        self._hasher = hasher
        self._fd = fd
        self._lock = threading.Lock()
        self._ahead: list[tuple[int, int]] = []  # written past the prefix, not hashed: sorted, disjoint
        self._advancing = False  # a thread is hashing: only it touches the hasher
        self.hashed = 0  # bytes [0, hashed) are hashed
        self.read_back = 0  # bytes hashed from disk, having arrived ahead of the prefix

    def wrote(self, start: int, data: bytes | memoryview) -> None:
        """``data`` is on disk at ``start`` now (written before the call): hash it, or keep its place."""
        end = start + len(data)
        with self._lock:
            self._check(start)
            if self._advancing or start != self.hashed:
                self._keep(start, end)
                return
            self._advancing = True
        self._hasher.update(data)
        self._advance(end)

    def on_disk(self, start: int, end: int) -> None:
        """Bytes ``[start, end)`` are on disk but in no buffer (a dead writer's, adopted): read them back
        once the prefix reaches them."""
        if start >= end:
            return
        with self._lock:
            self._check(start)
            self._keep(start, end)
            if self._advancing or start != self.hashed:
                return
            self._advancing = True
        self._advance(start)

    def hexdigest(self, size: int) -> str:
        """The digest of the file's ``size`` bytes; all of them must have been written."""
        with self._lock:
            if self.hashed != size or self._advancing:
                raise ValueError(f"{self.hashed:,} of {size:,} bytes hashed so far")
        return self._hasher.hexdigest()

    def _check(self, start: int) -> None:
        if start < self.hashed:
            raise ValueError(f"bytes from {start:,} on were hashed already (up to {self.hashed:,})")

    def _keep(self, start: int, end: int) -> None:
        i = bisect.bisect_left(self._ahead, (start, end))
        self._ahead.insert(i, (start, end))
        merged: list[tuple[int, int]] = []
        for a, b in self._ahead:
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
            else:
                merged.append((a, b))
        self._ahead = merged

    def _advance(self, end: int) -> None:
        """The prefix reaches ``end``: go on through whatever waits on disk right after it."""
        while True:
            with self._lock:
                self.hashed = start = end
                if not self._ahead or self._ahead[0][0] != start:
                    self._advancing = False
                    return
                _, end = self._ahead.pop(0)
            for position in range(start, end, _READ_BLOCK):
                block = os.pread(self._fd, min(_READ_BLOCK, end - position), position)
                if len(block) != min(_READ_BLOCK, end - position):
                    raise OSError(f"the file ends before its written bytes do ({end:,})")
                self._hasher.update(block)
                self.read_back += len(block)
