"""A transfer's partial file: ranges written in any order, nothing past a range's end, the file's digest
known as the last byte lands, wrong bytes blamed on exactly their source, and a successor resumes
only what was written."""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from candle.download.node.cache_layout import RepoCache
from candle.download.node.listing import RemoteFile
from candle.download.node.partial_file import (
    Overrun,
    PartialFile,
    Provenance,
    Written,
    ranges_record,
    written_spans,
)


def remote(data: bytes) -> RemoteFile:
    git = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
    return RemoteFile("model.safetensors", len(data), git, hashlib.sha256(data).hexdigest())


def test_a_write_past_the_range_is_refused_whole(tmp_path: Path):
    partial = PartialFile(tmp_path / "blob.incomplete", remote(b"x" * 20))
    partial.open()
    writer = partial.writer("a", 0, 10)
    writer.write(b"x" * 6)
    with pytest.raises(Overrun):
        writer.write(b"y" * 5)
    writer.write(b"x" * 4)
    partial.close()
    assert (tmp_path / "blob.incomplete").read_bytes() == b"x" * 10
    assert partial.provenance.ranges == [Written(0, 10, "a")]


def test_ranges_from_two_sources_written_out_of_order_make_the_file_and_its_digest(tmp_path: Path):
    data = random.Random(3).randbytes(1 << 20)
    partial = PartialFile(tmp_path / "blob.incomplete", remote(data), pieces=True)
    partial.open()
    quarter = len(data) // 4
    for source, start in [("b", 3 * quarter), ("a", quarter), ("b", 2 * quarter), ("a", 0)]:
        partial.writer(source, start, start + quarter).write(data[start : start + quarter])
    digest, fingerprint = partial.finish()
    partial.close()
    assert (tmp_path / "blob.incomplete").read_bytes() == data
    assert digest == hashlib.sha256(data).hexdigest() and fingerprint.size == len(data)
    assert partial.provenance.ranges == [
        Written(0, 2 * quarter, "a"),
        Written(2 * quarter, 4 * quarter, "b"),
    ]
    assert partial.read_back == 3 * quarter, "all but the range at the prefix arrived ahead of it: read back"


def test_a_successor_resumes_only_the_ranges_the_record_lists(tmp_path: Path):
    """A writer killed mid-blob leaves holes (zeros on disk): its record, not the file's size, says what is there."""
    data = random.Random(4).randbytes(64 * 1024)
    path = tmp_path / "blob.incomplete"
    dead = PartialFile(path, remote(data), pieces=True)
    dead.open()
    assert json.loads(ranges_record(path).read_text()) == [], "the record exists before any byte"
    dead.writer("a", 40_000, 50_000).write(data[40_000:50_000])
    dead.writer("a", 0, 10_000).write(data[:10_000])
    dead.save()
    dead.writer("a", 10_000, 20_000).write(data[10_000:20_000])  # written, then killed before the next save
    dead.close()
    assert path.stat().st_size == 50_000

    successor = PartialFile(path, remote(data))
    successor.open()
    assert successor.pieces, "a file with a record keeps one"
    assert successor.missing() == [(10_000, 40_000), (50_000, len(data))]
    for start, end in successor.missing():
        successor.writer("b", start, end).write(data[start:end])
    digest, _ = successor.finish()
    assert digest == hashlib.sha256(data).hexdigest()


def killed_writer(cache: RepoCache, f: RemoteFile, data: bytes, spans: list[tuple[int, int]]) -> Path:
    """A transfer killed after writing ``spans`` in pieces: its file and its record are left behind."""
    dead = PartialFile(cache.partial_path(f), f, pieces=True)
    dead.open()
    for start, end in spans:
        dead.writer("a", start, end).write(data[start:end])
    dead.save()
    dead.close()
    return dead.path


@pytest.mark.parametrize("hf_orphan", [0, 30_000], ids=["alone", "beside-a-longer-prefix"])
def test_the_orphan_holding_the_most_bytes_is_adopted_with_its_record(tmp_path: Path, hf_orphan: int):
    """The successor resumes the orphan that holds the most written bytes (not the largest file: a file
    in pieces has holes), its record moved with it, and the other orphans and their records removed."""
    data = random.Random(5).randbytes(64 * 1024)
    f = remote(data)
    cache = RepoCache(tmp_path / "models--org--name")
    cache.blobs.mkdir(parents=True)
    dead = killed_writer(cache, f, data, [(40_000, 50_000), (0, 10_000)])  # a 50,000-byte file of 20,000 bytes
    if hf_orphan:
        (cache.blobs / f"{f.etag}.incomplete").write_bytes(data[:hf_orphan])  # huggingface_hub's, in order

    successor = PartialFile(cache.partial_path(f), f)
    with cache.lock(f):
        cache.adopt_orphan(f, successor.path)
    successor.open()

    if hf_orphan:
        assert successor.missing() == [(hf_orphan, len(data))]
    else:
        assert successor.missing() == [(10_000, 40_000), (50_000, len(data))] and successor.pieces
    kept = {successor.path, ranges_record(successor.path)} if successor.pieces else {successor.path}
    assert set(cache.blobs.iterdir()) == kept, "every other orphan, and its record, removed"
    assert not dead.exists() and not ranges_record(dead).exists()


def test_a_file_without_a_record_holds_its_first_bytes_and_a_file_larger_than_listed_nothing(tmp_path: Path):
    path = tmp_path / "blob.incomplete"
    path.write_bytes(b"abc")
    assert written_spans(path, 10) == [(0, 3)]
    assert written_spans(path, 2) is None
    ranges_record(path).write_text("[[0, 99]]")  # a record claiming bytes past the file's listed size
    assert written_spans(path, 10) is None
    ranges_record(path).write_text("[[5, 9]]")
    assert written_spans(path, 10) == [], "recorded bytes past the end of the file on disk are not there"


pieces = st.lists(st.tuples(st.sampled_from("abcd"), st.integers(1, 300)), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(pieces=pieces, data=st.data())
def test_exactly_the_sources_that_sent_a_wrong_byte_are_blamed(pieces: list[tuple[str, int]], data: st.DataObject):
    blob = data.draw(st.binary(min_size=sum(n for _, n in pieces), max_size=sum(n for _, n in pieces)))
    wrong = data.draw(st.sets(st.integers(0, len(blob) - 1), max_size=4))
    spans, position = [], 0
    for source, n in pieces:
        spans.append((source, position, position + n))
        position += n
    order = data.draw(st.permutations(spans))  # ranges arrive in any order, over several connections
    with tempfile.TemporaryDirectory() as folder:
        path, verified = Path(folder) / "x.incomplete", Path(folder) / "x"
        verified.write_bytes(blob)
        partial = PartialFile(path, remote(blob), pieces=True)
        partial.open()
        senders = {}
        for source, start, end in order:
            sent = bytearray(blob[start:end])
            for i in wrong & set(range(start, end)):
                sent[i - start] ^= 0xFF
                senders[i] = source
            partial.writer(source, start, end).write(bytes(sent))
        digest, _ = partial.finish()
        assert (digest == hashlib.sha256(blob).hexdigest()) == (not wrong)
        partial.set_aside()
        assert not path.exists() and not ranges_record(path).exists()
        assert partial.provenance.blame(verified) == set(senders.values())
        assert list(Path(folder).iterdir()) == [verified], "the set-aside partial is removed once judged"


def test_a_provenance_records_overwrites_and_reaches_as_far_as_the_written_bytes():
    provenance = Provenance()
    provenance.wrote("a", 0, 10)
    provenance.wrote("b", 20, 10)
    provenance.wrote("c", 5, 20)  # over the end of a's and the start of b's
    assert provenance.ranges == [Written(0, 5, "a"), Written(5, 25, "c"), Written(25, 30, "b")]
    assert provenance.run_end(3) == 30 and provenance.run_end(30) == 30
    assert provenance.missing(40) == [(30, 40)]
