"""The cache's integrity against every writer: other downloaders, huggingface_hub, and later damage.

These run the node downloader in the test's own process (two instances stand for two clusters on
one cache) against the fault-injecting test hub, and huggingface_hub's own ``hf_hub_download`` as
the other tool writing to the same cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from huggingface_hub import constants, hf_hub_download, snapshot_download

from candle.demo.hub import Fault, LocalHub
from candle.download import DownloaderSettings, NotCached
from candle.download.client import make_request
from candle.download.downloader import NodeDownloader
from candle.download.node.cache_layout import RepoCache
from candle.download.node.integrity import Fingerprint, publish
from candle.download.node.listing import RemoteFile
from candle.download.node.partial_file import ranges_record
from tests.conftest import RepoFactory

MB = 1024 * 1024
WEIGHTS = "model.safetensors"
# What tests/conftest.py gives the Ray workers, for downloaders that run in this process instead.
SETTINGS = DownloaderSettings(stall_timeout=2, backoff_base=0.2, max_attempts=4, niceness=0, coordinate=False)

Downloaders = Callable[..., NodeDownloader]


@pytest.fixture
def downloaders() -> Iterator[Downloaders]:
    """Make in-process node downloaders; closed after the test."""
    made: list[NodeDownloader] = []

    def make(settings: DownloaderSettings = SETTINGS) -> NodeDownloader:
        made.append(NodeDownloader(settings))
        return made[-1]

    yield make
    for downloader in made:
        downloader.close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_byte_exact(snapshot: Path, source: dict[str, Path]) -> None:
    for rel, src in source.items():
        assert sha256(snapshot / rel) == sha256(src), rel
        assert (snapshot / rel).resolve().stat().st_size == src.stat().st_size, rel


def blob_of(snapshot: Path, rel: str) -> Path:
    return (snapshot / rel).resolve()


def remote_file(source: dict[str, Path], rel: str) -> RemoteFile:
    data = source[rel].read_bytes()
    git = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
    return RemoteFile(rel, len(data), git, hashlib.sha256(data).hexdigest())


async def fetch(downloader: NodeDownloader, hub: LocalHub, repo: str, cache: Path) -> Path:
    return Path(await downloader.fetch(make_request(repo, cache_dir=cache, endpoint=hub.endpoint)))


def hf_download(hub: LocalHub, repo: str, cache: Path, filename: str = WEIGHTS) -> Path:
    return Path(hf_hub_download(repo, filename, cache_dir=cache, endpoint=hub.endpoint))


async def until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def spelled_differently(tmp_path: Path) -> tuple[Path, Path]:
    """One cache folder and another spelling of it, through a symlink and ``..``."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (tmp_path / "alias").symlink_to(cache)
    return cache, tmp_path / "alias" / ".." / "alias"


@contextmanager
def lock_waits(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """What huggingface_hub logs while a blob's lock (its class: candle's too) is held by another
    writer: a line every 0.05 s of waiting."""
    monkeypatch.setattr(constants, "FILELOCK_LOG_EVERY_SECONDS", 0.05)
    waits: list[str] = []
    hf_locks = logging.getLogger("huggingface_hub.utils._fixes")

    class Waits(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            waits.append(record.getMessage())

    handler, level = Waits(logging.INFO), hf_locks.level
    hf_locks.addHandler(handler)
    hf_locks.setLevel(logging.INFO)
    try:
        yield waits
    finally:
        hf_locks.removeHandler(handler)
        hf_locks.setLevel(level)


async def test_huggingface_hub_waits_on_the_lock_candle_holds(
    hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path, monkeypatch: pytest.MonkeyPatch
):
    """Pins huggingface_hub's private lock path and class: it must wait on exactly candle's lock."""
    source = make_repo({WEIGHTS: 1 * MB})
    cache = RepoCache(tmp_path / f"models--{repo_name.replace('/', '--')}")
    f = remote_file(source, WEIGHTS)
    with lock_waits(monkeypatch) as waits:
        with cache.lock(f):
            hf = asyncio.ensure_future(asyncio.to_thread(hf_download, hub, repo_name, tmp_path))
            await until(lambda: bool(waits), "huggingface_hub waits for a lock")
            assert not hf.done()
        assert sha256(await hf) == sha256(source[WEIGHTS])
    waited_on = waits[0].removeprefix("Still waiting to acquire lock on ").rpartition(" (elapsed")[0]
    assert Path(waited_on).resolve() == cache.lock_path(f)
    assert hub.stats.bodies_for(repo_name) == {WEIGHTS: 1}


async def test_two_spellings_of_one_cache_share_one_transfer(
    hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path, downloaders: Downloaders
):
    source = make_repo({WEIGHTS: 4 * MB})
    hub.state.bandwidth = 4 * MB
    cache, alias = spelled_differently(tmp_path)
    downloader = downloaders()
    snapshots = await asyncio.gather(fetch(downloader, hub, repo_name, cache), fetch(downloader, hub, repo_name, alias))
    for snapshot in snapshots:
        assert_byte_exact(snapshot, source)
    assert hub.stats.bodies_for(repo_name) == dict.fromkeys(source, 1)


async def test_two_downloaders_on_one_cache_publish_one_verified_blob(
    hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path, downloaders: Downloaders
):
    """Two clusters on one cache (the second spells it differently): one writes, the other waits and reuses."""
    source = make_repo({WEIGHTS: 4 * MB})
    hub.state.bandwidth = 4 * MB
    cache, alias = spelled_differently(tmp_path)
    snapshots = await asyncio.gather(
        fetch(downloaders(), hub, repo_name, cache), fetch(downloaders(), hub, repo_name, alias)
    )
    for snapshot in snapshots:
        assert_byte_exact(snapshot, source)
    assert hub.stats.bodies_for(repo_name) == dict.fromkeys(source, 1)
    blobs = blob_of(snapshots[0], WEIGHTS).parent
    assert sorted(p.name for p in blobs.iterdir()) == sorted(blob_of(snapshots[0], rel).name for rel in source)


async def test_the_bytes_a_killed_writer_left_are_resumed_not_downloaded_again(
    hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path, downloaders: Downloaders
):
    source = make_repo({WEIGHTS: 4 * MB})
    cache = RepoCache(tmp_path / f"models--{repo_name.replace('/', '--')}")
    f = remote_file(source, WEIGHTS)
    cache.blobs.mkdir(parents=True)
    # A downloader killed mid-blob leaves its transfer's file (a name of its own) and nothing else.
    cache.partial_path(f).write_bytes(source[WEIGHTS].read_bytes()[: 3 * MB])

    assert_byte_exact(await fetch(downloaders(), hub, repo_name, tmp_path), source)
    assert hub.stats.body_bytes[(repo_name, WEIGHTS)] == 1 * MB, "only the bytes the dead writer had not"
    assert not list(cache.blobs.glob("*.incomplete"))


@pytest.mark.parametrize("first", ["candle", "huggingface_hub"])
async def test_candle_and_hf_hub_download_race_on_one_cache(
    hub: LocalHub,
    make_repo: RepoFactory,
    repo_name,
    tmp_path,
    downloaders: Downloaders,
    first: str,
    monkeypatch: pytest.MonkeyPatch,
):
    """Whoever starts first writes the blob under huggingface_hub's lock; the other waits and uses it."""
    source = make_repo({WEIGHTS: 4 * MB})
    # The leader's transfer is held half-way until the follower is seen waiting for the blob's lock.
    hold = hub.state.add_fault(Fault("hold", path=WEIGHTS, at=0.5))
    downloader = downloaders(replace(SETTINGS, stall_timeout=30))  # a held transfer is not a stalled one
    started = {
        "candle": lambda: asyncio.ensure_future(fetch(downloader, hub, repo_name, tmp_path)),
        "huggingface_hub": lambda: asyncio.ensure_future(asyncio.to_thread(hf_download, hub, repo_name, tmp_path)),
    }
    with lock_waits(monkeypatch) as waits:
        leader = started[first]()
        assert await asyncio.to_thread(hold.held.wait, 30), f"{first}'s transfer reached the hold"
        follower = started["huggingface_hub" if first == "candle" else "candle"]()
        try:
            await until(lambda: bool(waits), "the follower waits for the leader's lock")
            assert not leader.done() and not follower.done()
        finally:
            hold.release()
        results = await asyncio.gather(leader, follower)
    snapshot = next(r for r in results if r.is_dir())
    hf_file = next(r for r in results if r.is_file())
    assert_byte_exact(snapshot, source)
    assert sha256(hf_file) == sha256(source[WEIGHTS])
    assert hub.stats.bodies[(repo_name, WEIGHTS)] == 1


@contextmanager
def reads_of_partial_files(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int]]]:
    """Every read of a transfer's partial file in this process (name, bytes): through a file object or
    ``os.pread``, the two ways a file's bytes can be read back to hash them."""
    reads: list[tuple[str, int]] = []
    path_open, pread = Path.open, os.pread

    def opened(self: Path, mode: str = "r", *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        if ".incomplete" in self.name and "r" in mode and "+" not in mode:
            reads.append((self.name, -1))
        return path_open(self, mode, *args, **kwargs)  # type: ignore[arg-type]

    def read_at(fd: int, n: int, offset: int) -> bytes:
        data = pread(fd, n, offset)
        name = os.readlink(f"/proc/self/fd/{fd}")
        if ".incomplete" in name:
            reads.append((Path(name).name, len(data)))
        return data

    monkeypatch.setattr(Path, "open", opened)
    monkeypatch.setattr(os, "pread", read_at)
    yield reads


async def test_a_blob_is_hashed_as_it_arrives_and_never_read_back_from_disk(
    hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path, downloaders: Downloaders, monkeypatch
):
    """Reading the whole file back after writing it only hashed the same bytes twice: the bytes are
    hashed as they stream into the file, and the file is flushed, renamed and recorded as it was
    hashed (same inode and size)."""
    source = make_repo({WEIGHTS: 8 * MB})
    with reads_of_partial_files(monkeypatch) as reads:
        snapshot = await fetch(downloaders(), hub, repo_name, tmp_path)
    assert_byte_exact(snapshot, source)
    assert reads == [], "a transfer in one connection, in order, reads nothing of its file back"
    blob = blob_of(snapshot, WEIGHTS)
    cache = RepoCache(blob.parent.parent)
    assert cache.has_blob(remote_file(source, WEIGHTS)), "recorded as the file on disk is: size, mtime, inode"


def test_a_renamed_file_that_is_not_the_one_hashed_is_not_published(tmp_path: Path):
    """The last check before a blob is recorded: the file now at the blob's name is the one that was
    written and hashed (its inode and size), not one that replaced it in between."""
    partial, blob, record = tmp_path / "x.incomplete", tmp_path / "x", tmp_path / "records" / "x"
    partial.write_bytes(b"right bytes")
    hashed = Fingerprint.of(os.stat(partial))
    replaced = tmp_path / "other.incomplete"
    replaced.write_bytes(b"right bytes")
    os.replace(replaced, partial)  # another file took its name after it was hashed

    assert not publish(partial, blob, record, "d" * 64, hashed)
    assert not blob.exists() and not record.exists()
    partial.write_bytes(b"right bytes")
    assert publish(partial, blob, record, "d" * 64, Fingerprint.of(os.stat(partial)))
    assert blob.read_bytes() == b"right bytes" and record.exists()


async def test_blob_zeroed_in_place_is_detected_and_fetched_again(
    hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path, downloaders: Downloaders
):
    source = make_repo({WEIGHTS: 2 * MB})
    downloader = downloaders()
    blob = blob_of(await fetch(downloader, hub, repo_name, tmp_path), WEIGHTS)
    with blob.open("r+b") as damaged:  # same size, same inode: only the bytes change
        damaged.write(bytes(2 * MB))
    assert_byte_exact(await fetch(downloader, hub, repo_name, tmp_path), source)
    assert hub.stats.bodies_for(repo_name) == {WEIGHTS: 2, "config.json": 1}


async def test_blob_written_by_hf_hub_download_is_verified_once_not_fetched_again(
    hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path, downloaders: Downloaders
):
    source = make_repo({WEIGHTS: 2 * MB})
    hf_download(hub, repo_name, tmp_path)
    downloader = downloaders()
    snapshot = await fetch(downloader, hub, repo_name, tmp_path)
    assert_byte_exact(snapshot, source)
    assert hub.stats.bodies_for(repo_name) == {WEIGHTS: 1, "config.json": 1}
    record = RepoCache(blob_of(snapshot, WEIGHTS).parent.parent).record_path(remote_file(source, WEIGHTS))
    verified_at = record.stat().st_mtime_ns
    assert_byte_exact(await fetch(downloader, hub, repo_name, tmp_path), source)
    assert record.stat().st_mtime_ns == verified_at, "verified once: the record is not rewritten"
    assert hub.stats.bodies_for(repo_name) == {WEIGHTS: 1, "config.json": 1}


async def test_unverified_blob_of_another_writer_that_does_not_match_is_fetched_again(
    hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path, downloaders: Downloaders
):
    source = make_repo({WEIGHTS: 2 * MB})
    blob = hf_download(hub, repo_name, tmp_path).resolve()
    blob.write_bytes(bytes(2 * MB))  # what a crash before the data reached the disk can leave
    assert_byte_exact(await fetch(downloaders(), hub, repo_name, tmp_path), source)
    assert hub.stats.bodies_for(repo_name) == {WEIGHTS: 2, "config.json": 1}


async def test_offline_fetch_verifies_what_huggingface_hub_downloaded(
    hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path, downloaders: Downloaders, monkeypatch
):
    source = make_repo({WEIGHTS: 1 * MB})
    snapshot_download(repo_name, cache_dir=tmp_path, endpoint=hub.endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    downloader = downloaders()
    snapshot = await fetch(downloader, hub, repo_name, tmp_path)
    assert_byte_exact(snapshot, source)
    blob_of(snapshot, WEIGHTS).write_bytes(bytes(1 * MB))
    with pytest.raises(NotCached, match=f"{repo_name}/{WEIGHTS}"):
        await fetch(downloader, hub, repo_name, tmp_path)
    assert hub.stats.bodies_for(repo_name) == dict.fromkeys(source, 1)


DAY = 24 * 3600


def orphan(
    cache: RepoCache, etag: str, data: bytes, age_s: float = 0, hf_style: bool = False, suffix: str = "incomplete"
) -> Path:
    """A transfer's file that a killed writer left: candle's name for it or huggingface_hub's, ``age_s`` old
    (``suffix`` "suspect": bytes candle set aside to find which source sent wrong ones)."""
    path = cache.blobs / (f"{etag}.incomplete" if hf_style else f"{etag}.{os.urandom(6).hex()}.{suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


async def test_orphan_partials_are_removed_once_stale_and_unlocked_only(
    hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path
):
    """Partial files nobody resumes are removed when the repo is next fetched, under each blob's lock:
    a file whose lock a live writer holds, or that changed lately, stays (huggingface_hub resumes its own)."""
    source = make_repo({WEIGHTS: 1 * MB})
    cache = RepoCache(tmp_path / f"models--{repo_name.replace('/', '--')}")
    weights = remote_file(source, WEIGHTS)
    data = source[WEIGHTS].read_bytes()
    adopted = orphan(cache, weights.etag, data[: 512 * 1024])  # the largest: resumed by the fetch
    smaller = orphan(cache, weights.etag, data[:1024], hf_style=True)  # dead (its lock is free): useless now
    gone, other = "d" * 64, "e" * 40  # blobs no listing asks for now
    stale = [orphan(cache, gone, b"x" * 10, age_s=2 * DAY), orphan(cache, other, b"y", age_s=2 * DAY, hf_style=True)]
    fresh = orphan(cache, gone, b"z", age_s=60)  # perhaps about to be resumed
    held = orphan(cache, "f" * 64, b"w", age_s=2 * DAY, hf_style=True)  # a live writer (hf download) holds its lock
    # Records of written ranges: a stale orphan's goes with it, and one whose file is gone goes too.
    records = [ranges_record(stale[0]), ranges_record(cache.blobs / f"{gone}.{os.urandom(6).hex()}.incomplete")]
    for record in records:
        record.write_text("[]")
        os.utime(record, (time.time() - 2 * DAY, time.time() - 2 * DAY))
    downloader = NodeDownloader(replace(SETTINGS, orphan_age_s=DAY))
    try:
        with cache.lock(RemoteFile("held", 1, "0" * 40, "f" * 64)):
            assert_byte_exact(await fetch(downloader, hub, repo_name, tmp_path), source)
    finally:
        downloader.close()

    assert hub.stats.body_bytes[(repo_name, WEIGHTS)] == len(data) - 512 * 1024, "the largest orphan was resumed"
    assert sorted(cache.blobs.glob("*.incomplete")) == sorted([fresh, held])
    assert not adopted.exists() and not smaller.exists() and not any(p.exists() for p in stale)
    assert not any(r.exists() for r in records)


async def test_set_aside_bytes_a_dead_writer_left_are_swept_like_its_partials(
    hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path, downloaders: Downloaders
):
    """A transfer killed between finding wrong bytes from several sources and judging them leaves the
    partial it set aside (``<etag>.<id>.suspect``): removed once stale, as an orphan partial is."""
    source = make_repo()
    cache = RepoCache(tmp_path / f"models--{repo_name.replace('/', '--')}")
    stale, fresh = (orphan(cache, "d" * 64, b"x", age_s=age, suffix="suspect") for age in (2 * DAY, 60))
    assert_byte_exact(await fetch(downloaders(replace(SETTINGS, orphan_age_s=DAY)), hub, repo_name, tmp_path), source)
    assert not stale.exists() and fresh.exists()


async def test_a_live_transfers_partial_survives_the_sweep_however_old(
    hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path, downloaders: Downloaders
):
    source = make_repo({WEIGHTS: 4 * MB})
    hub.state.bandwidth = 1 * MB  # 4 s of transfer: the sweep below runs well inside it
    cache = RepoCache(tmp_path / f"models--{repo_name.replace('/', '--')}")
    downloader = downloaders()
    running = asyncio.ensure_future(fetch(downloader, hub, repo_name, tmp_path))
    etag = remote_file(source, WEIGHTS).etag
    await until(lambda: any(p.stat().st_size for p in cache.blobs.glob(f"{etag}.*")), "the transfer writes")
    (partial,) = cache.blobs.glob(f"{etag}.*.incomplete")
    os.utime(partial, (time.time() - 10 * DAY, time.time() - 10 * DAY))
    # Another request of the same repo sweeps its orphans while the transfer runs.
    config = make_request(repo_name, cache_dir=tmp_path, endpoint=hub.endpoint, allow_patterns=["config.json"])
    await downloader.fetch(config)
    assert not running.done() and partial.exists(), "the sweep ran while the transfer was still writing"
    assert_byte_exact(await running, source)
    assert hub.stats.bodies_for(repo_name) == {WEIGHTS: 1, "config.json": 1}
