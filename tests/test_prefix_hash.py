"""The checksum of a file written in any order is the file's own, and only bytes that arrived ahead of
the hashed prefix are read back from disk."""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from candle.download.node.prefix_hash import PrefixHash


def cuts(size: int, data: st.DataObject) -> list[tuple[int, int]]:
    points = sorted(data.draw(st.sets(st.integers(1, size - 1), max_size=12))) if size > 1 else []
    edges = [0, *points, size]
    return list(itertools.pairwise(edges))


@settings(max_examples=200, deadline=None)
@given(blob=st.binary(min_size=1, max_size=4000), data=st.data())
def test_any_order_of_writes_hashes_to_the_files_digest_reading_back_only_what_came_early(
    blob: bytes, data: st.DataObject
):
    pieces = data.draw(st.permutations(cuts(len(blob), data)))
    adopted = data.draw(st.sets(st.sampled_from(pieces))) if pieces else set()  # a dead writer's bytes, on disk
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "blob.incomplete"
        fd = os.open(path, os.O_RDWR | os.O_CREAT)
        try:
            digest = PrefixHash(hashlib.sha256(), fd)
            for start, end in sorted(adopted):
                os.pwrite(fd, blob[start:end], start)
                digest.on_disk(start, end)
            covered = set().union(*(range(a, b) for a, b in adopted))
            from_memory = 0
            for start, end in pieces:
                if (start, end) in adopted:
                    continue
                prefix = next(i for i in range(len(blob) + 1) if i not in covered)
                os.pwrite(fd, blob[start:end], start)
                digest.wrote(start, blob[start:end])
                covered |= set(range(start, end))
                if start == prefix:
                    from_memory += end - start
            assert digest.hexdigest(len(blob)) == hashlib.sha256(blob).hexdigest()
            assert digest.read_back == len(blob) - from_memory
        finally:
            os.close(fd)


def test_one_writer_in_order_reads_nothing_back(tmp_path: Path):
    blob = random.Random(1).randbytes(1 << 20)
    fd = os.open(tmp_path / "blob", os.O_RDWR | os.O_CREAT)
    digest = PrefixHash(hashlib.sha1(f"blob {len(blob)}\0".encode()), fd)
    for start in range(0, len(blob), 4096):
        os.pwrite(fd, blob[start : start + 4096], start)
        digest.wrote(start, blob[start : start + 4096])
    os.close(fd)
    assert digest.hexdigest(len(blob)) == hashlib.sha1(f"blob {len(blob)}\0".encode() + blob).hexdigest()
    assert digest.read_back == 0


def test_writers_in_several_threads_hash_to_the_files_digest(tmp_path: Path):
    """Eight ranges written at once, in small writes, as parallel connections write them."""
    blob = random.Random(2).randbytes(8 << 20)
    fd = os.open(tmp_path / "blob", os.O_RDWR | os.O_CREAT)
    digest = PrefixHash(hashlib.sha256(), fd)
    span = len(blob) // 8

    def write_range(first: int) -> None:
        for start in range(first, first + span, 16 * 1024):
            piece = blob[start : min(start + 16 * 1024, first + span)]
            os.pwrite(fd, piece, start)
            digest.wrote(start, piece)

    threads = [threading.Thread(target=write_range, args=(i * span,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    os.close(fd)
    assert digest.hexdigest(len(blob)) == hashlib.sha256(blob).hexdigest()
    assert digest.read_back < len(blob)


def test_bytes_below_the_prefix_cannot_be_written_again_and_an_unfinished_file_has_no_digest(tmp_path: Path):
    fd = os.open(tmp_path / "blob", os.O_RDWR | os.O_CREAT)
    digest = PrefixHash(hashlib.sha256(), fd)
    os.pwrite(fd, b"abcd", 0)
    digest.wrote(0, b"abcd")
    with pytest.raises(ValueError, match="hashed already"):
        digest.wrote(2, b"xy")
    with pytest.raises(ValueError, match="4 of 8 bytes"):
        digest.hexdigest(8)
    os.close(fd)
