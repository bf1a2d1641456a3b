"""The cache's integrity against every writer: other downloaders, huggingface_hub, and later damage.

These run the node downloader in the test's own process (two instances stand for two clusters on
one cache) against the fault-injecting test hub, and huggingface_hub's own ``hf_hub_download`` as
the other tool writing to the same cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants, hf_hub_download, snapshot_download

from candle.demo.hub import LocalHub
from candle.download import DownloaderSettings, NotCached
from candle.download.cache_layout import RepoCache
from candle.download.client import make_request
from candle.download.downloader import NodeDownloader
from candle.download.listing import RemoteFile
from tests.conftest import RepoFactory

MB = 1024 * 1024
WEIGHTS = "model.safetensors"
# What tests/conftest.py gives the Ray workers, for downloaders that run in this process instead.
SETTINGS = DownloaderSettings(stall_timeout=2, backoff_base=0.2, max_attempts=4, niceness=0, coordinate=False)

Downloaders = Callable[[], NodeDownloader]


@pytest.fixture
def downloaders(monkeypatch: pytest.MonkeyPatch) -> Iterator[Downloaders]:
    """Make in-process node downloaders; closed after the test."""
    # A downloader sets huggingface_hub's read time-out and chunk size for its process: undo it after.
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", constants.HF_HUB_DOWNLOAD_TIMEOUT)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", constants.DOWNLOAD_CHUNK_SIZE)
    made: list[NodeDownloader] = []

    def make() -> NodeDownloader:
        made.append(NodeDownloader(SETTINGS))
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


async def test_huggingface_hub_waits_on_the_lock_candle_holds(
    hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path, monkeypatch: pytest.MonkeyPatch
):
    """Pins huggingface_hub's private lock path and class: it must wait on exactly candle's lock."""
    source = make_repo({WEIGHTS: 1 * MB})
    cache = RepoCache(tmp_path / f"models--{repo_name.replace('/', '--')}")
    f = remote_file(source, WEIGHTS)
    monkeypatch.setattr(constants, "FILELOCK_LOG_EVERY_SECONDS", 0.05)  # hf logs each wait this often
    waits: list[str] = []
    hf_locks = logging.getLogger("huggingface_hub.utils._fixes")

    class Waits(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            waits.append(record.getMessage())

    handler, level = Waits(logging.INFO), hf_locks.level
    hf_locks.addHandler(handler)
    hf_locks.setLevel(logging.INFO)
    try:
        with cache.lock(f):
            hf = asyncio.ensure_future(asyncio.to_thread(hf_download, hub, repo_name, tmp_path))
            await until(lambda: bool(waits), "huggingface_hub waits for a lock")
            assert not hf.done()
        assert sha256(await hf) == sha256(source[WEIGHTS])
    finally:
        hf_locks.removeHandler(handler)
        hf_locks.setLevel(level)
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
    hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path, downloaders: Downloaders, first: str
):
    """Whoever starts first writes the blob under huggingface_hub's lock; the other waits and uses it."""
    source = make_repo({WEIGHTS: 4 * MB})
    hub.state.bandwidth = 4 * MB
    downloader = downloaders()
    started = {
        "candle": lambda: asyncio.ensure_future(fetch(downloader, hub, repo_name, tmp_path)),
        "huggingface_hub": lambda: asyncio.ensure_future(asyncio.to_thread(hf_download, hub, repo_name, tmp_path)),
    }
    leader = started[first]()
    await until(lambda: hub.stats.bodies[(repo_name, WEIGHTS)] == 1, f"{first} starts the transfer")
    follower = started["huggingface_hub" if first == "candle" else "candle"]()
    results = await asyncio.gather(leader, follower)
    snapshot = next(r for r in results if r.is_dir())
    hf_file = next(r for r in results if r.is_file())
    assert_byte_exact(snapshot, source)
    assert sha256(hf_file) == sha256(source[WEIGHTS])
    assert hub.stats.bodies[(repo_name, WEIGHTS)] == 1


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
