"""Fault soak of the download service: many fetches while everything that can go wrong does.

Two node downloaders (two clusters, one of them spelling the cache through a symlink) fetch a few
repos over and over from the test hub while it drops, corrupts, stalls and refuses (429, 500)
transfers at random; huggingface_hub's ``hf_hub_download`` writes the same cache as a second tool;
verified blobs are zeroed in place or deleted under the downloaders; and, on a small tmpfs, the
disk fills up. Invariants: every file visible under ``snapshots/`` hashes to the hub's checksum at
every moment (a watcher thread hashes them continuously; only blobs the soak itself damaged are
exempt until a fetch started after the damage has repaired them), and every fetch ends byte-exact
or with a typed ``DownloadError``. The randomness is seeded; the run is bounded in time.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import hf_hub_download

from candle.demo.hub import Fault, LocalHub
from candle.download import DownloadError, DownloaderSettings, OutOfDisk
from candle.download.client import make_request
from candle.download.downloader import NodeDownloader
from tests.conftest import RepoFactory
from tests.small_disk import tmpfs

SEED = 20261201
MB = 1024 * 1024
SETTINGS = DownloaderSettings(
    max_concurrent_files=4,
    stall_timeout=1,
    max_attempts=4,
    backoff_base=0.05,
    backoff_max=0.4,
    niceness=0,
    coordinate=False,
)
FAULT_KINDS = ("drop", "corrupt", "429", "500", "stall")
FETCH_BOUND_S = 60  # a fetch that takes longer than this hangs: a liveness bound, not a speed check
Key = tuple[str, str]  # (repo id, path in the repo)
BLOB_NAME = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def hub_digest(path: Path, lfs: bool) -> str:
    """The checksum the hub publishes for a file: sha256 for LFS files, the git blob sha1 otherwise."""
    data = path.read_bytes()
    if lfs:
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


class Invariants:
    """What must hold at every moment, what the soak damaged on purpose, and what it saw happen."""

    def __init__(self, cache: Path, checksums: dict[Key, tuple[str, bool]]) -> None:
        self.cache = cache
        self.checksums = checksums  # (repo, path) -> (hub checksum, is LFS)
        self.lock = threading.Lock()  # damage and checks of the same bytes never interleave
        self.damaged: dict[Path, int] = {}  # blob -> the damage epoch
        self.epoch = 0
        self.violations: dict[str, None] = {}  # in the order seen, each once
        self.seen: Counter[str] = Counter()
        self._hashed: dict[tuple[Path, tuple[int, ...]], str] = {}

    def damage(self, blobs: list[Path], how: str) -> None:
        with self.lock:
            self.epoch += 1
            for blob in blobs:
                try:
                    if how == "zero":
                        with blob.open("r+b") as f:
                            f.write(bytes(blob.stat().st_size))
                    else:
                        blob.unlink()
                except FileNotFoundError:
                    continue
                self.damaged[blob] = self.epoch
                self.seen[f"blob {how}"] += 1

    def check_file(self, key: Key, visible: Path, since_epoch: int | None = None) -> bool:
        """Hash what ``visible`` shows; record a violation if wrong. False if it was damaged on purpose.

        ``since_epoch``: also exempt damage done after that epoch (a fetch that began before it).
        """
        with self.lock:
            blob = visible.resolve()
            epoch = self.damaged.get(blob)
            if epoch is not None and (since_epoch is None or epoch > since_epoch):
                return False
            try:
                st = blob.stat()
            except FileNotFoundError:
                self.violations[f"{key}: returned by a fetch but missing"] = None
                return True
            stamp = (blob, (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
            if stamp not in self._hashed:
                self._hashed[stamp] = hub_digest(blob, self.checksums[key][1])
            if self._hashed[stamp] != self.checksums[key][0]:
                self.violations[f"{key}: visible at {visible} with checksum {self._hashed[stamp][:12]}"] = None
            return True

    def repaired(self, key: Key, visible: Path, since_epoch: int) -> None:
        """A fetch that began after some damage returned ``visible``: that damage must be gone."""
        with self.lock:
            blob = visible.resolve()
            if self.damaged.get(blob, since_epoch + 1) <= since_epoch:
                del self.damaged[blob]
                self.seen["blob repaired"] += 1

    def visible_files(self) -> Iterator[tuple[Key, Path]]:
        for snapshot in self.cache.glob("models--*/snapshots/*"):
            repo = snapshot.parent.parent.name.removeprefix("models--").replace("--", "/")
            for visible in snapshot.rglob("*"):
                if visible.is_file():
                    yield (repo, visible.relative_to(snapshot).as_posix()), visible

    def watch(self, stop: threading.Event) -> None:
        """Hash every file visible under ``snapshots/``, over and over, until ``stop``."""
        while not stop.is_set():
            for key, visible in self.visible_files():
                try:
                    if key not in self.checksums:
                        self.violations[f"{key}: visible but not in the repo"] = None
                    elif self.check_file(key, visible):
                        self.seen["watcher checks"] += 1
                except FileNotFoundError:
                    continue  # removed as we looked: nothing visible
            stop.wait(0.02)


class Soak:
    """The actors of the soak; each runs until the deadline, choosing what to do with one seeded RNG."""

    def __init__(
        self,
        hub: LocalHub,
        clean_hub: LocalHub,
        repos: dict[str, list[str]],
        cache: Path,
        spellings: list[Path],
        invariants: Invariants,
    ) -> None:
        self.hub, self.clean_hub = hub, clean_hub
        self.repos = repos
        self.cache = cache
        self.spellings = spellings
        self.invariants = invariants
        self.rng = random.Random(SEED)
        self.downloaders = [NodeDownloader(SETTINGS) for _ in spellings]
        self.deadline = 0.0

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    async def fetch(self, which: int, repo: str, files: list[str] | None) -> str:
        """One fetch, checked: byte-exact, or a typed error; never a raw exception, never hung."""
        request = make_request(repo, cache_dir=self.spellings[which], endpoint=self.hub.endpoint, allow_patterns=files)
        since = self.invariants.epoch
        try:
            snapshot = Path(await asyncio.wait_for(self.downloaders[which].fetch(request), FETCH_BOUND_S))
        except DownloadError as e:
            outcome = f"typed {type(e).__name__}"
        except Exception as e:
            self.invariants.violations[f"fetch of {repo} raised {type(e).__name__}: {e}"] = None
            outcome = "raw error"
        else:
            outcome = "fetch byte-exact"
            for path in files or self.repos[repo]:
                if self.invariants.check_file((repo, path), snapshot / path, since):
                    self.invariants.repaired((repo, path), snapshot / path, since)
        self.invariants.seen[outcome] += 1
        return outcome

    async def fetcher(self) -> None:
        while self.running():
            repo = self.rng.choice(sorted(self.repos))
            files = self.rng.choice([None, None, sorted(self.rng.sample(self.repos[repo], 2))])
            await self.fetch(self.rng.randrange(len(self.downloaders)), repo, files)

    async def faults(self) -> None:
        while self.running():
            repo = self.rng.choice(sorted(self.repos))
            kind = self.rng.choice(FAULT_KINDS)
            path = self.rng.choice(self.repos[repo])
            at = self.rng.random()
            self.hub.state.add_fault(Fault(kind, path, repo, times=1, at=at, retry_after=1, stall_seconds=2.5))
            self.invariants.seen[f"fault {kind}"] += 1
            await asyncio.sleep(self.rng.uniform(0.1, 0.5))

    async def second_writer(self) -> None:
        """huggingface_hub on the same cache, from a hub without faults (it does not verify checksums)."""
        while self.running():
            repo = self.rng.choice(sorted(self.repos))
            path = self.rng.choice(self.repos[repo])
            try:
                await asyncio.to_thread(
                    hf_hub_download, repo, path, cache_dir=self.cache, endpoint=self.clean_hub.endpoint
                )
                self.invariants.seen["hf_hub_download"] += 1
            except Exception as e:
                self.invariants.seen[f"hf_hub_download {type(e).__name__}"] += 1
            await asyncio.sleep(self.rng.uniform(0.1, 0.6))

    def published_blobs(self) -> list[Path]:
        return sorted(p for p in self.cache.glob("models--*/blobs/*") if BLOB_NAME.fullmatch(p.name))

    async def damager(self) -> None:
        """Zero a published blob in place (same size, same inode), or delete a repo's blobs."""
        while self.running():
            await asyncio.sleep(self.rng.uniform(0.5, 1.5))
            blobs = self.published_blobs()
            if not blobs:
                continue
            if self.rng.random() < 0.7:
                self.invariants.damage([self.rng.choice(blobs)], "zero")
            else:
                repo_blobs = self.rng.choice(blobs).parent
                self.invariants.damage([b for b in blobs if b.parent == repo_blobs], "deleted")

    async def disk_filler(self, disk: Path) -> None:
        """Fill the disk to the last byte now and then, for a moment, while transfers run."""
        while self.running():
            await asyncio.sleep(self.rng.uniform(0.5, 1.5))
            filler = disk / "filler"
            await asyncio.to_thread(fill, filler)
            self.invariants.seen["disk filled"] += 1
            await asyncio.sleep(self.rng.uniform(0.2, 0.8))
            filler.unlink()

    async def run(self, seconds: float, disk: Path | None) -> None:
        self.hub.state.bandwidth = 20 * MB
        self.deadline = time.monotonic() + seconds
        actors = [self.fetcher() for _ in range(4)] + [self.faults(), self.second_writer(), self.damager()]
        if disk is not None:
            actors.append(self.disk_filler(disk))
        await asyncio.gather(*actors)

    async def heal(self) -> None:
        """Faults off: one fetch of every repo through each downloader repairs all the soak damaged."""
        self.hub.state.clear_faults()
        for which in range(len(self.downloaders)):
            for repo in sorted(self.repos):
                assert await self.fetch(which, repo, None) == "fetch byte-exact", (which, repo)

    def close(self) -> None:
        for downloader in self.downloaders:
            downloader.close()


def fill(path: Path) -> None:
    """Write ``path`` until the disk is full."""
    with path.open("wb") as f:
        try:
            while True:
                f.write(bytes(MB))
                f.flush()
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise


@pytest.fixture
def soak_repos(make_repo: RepoFactory, repo_name: str, hub: LocalHub) -> dict[str, list[str]]:
    """Three repos of LFS weights and plain text files."""
    repos = {}
    for i, weights in enumerate(([3 * MB, 2 * MB], [4 * MB], [1 * MB, 1 * MB])):
        shards = {f"model-{n:05d}.safetensors": size for n, size in enumerate(weights)}
        texts = {"config.json": b'{"layers": %d}' % i, "tokenizer.json": bytes(range(256)) * 800 * (i + 1)}
        repos[f"{repo_name}-{i}"] = sorted(make_repo(shards, texts, repo_id=f"{repo_name}-{i}"))
    return repos


async def soak(hub: LocalHub, repos: dict[str, list[str]], root: Path, seconds: float, disk: Path | None) -> Counter:
    checksums: dict[Key, tuple[str, bool]] = {}
    for repo in repos:
        for path, f in hub.state.repo(repo).files.items():
            checksums[(repo, path)] = (f.sha256 or f.blob_id, f.sha256 is not None)
    cache = root / "cache"
    cache.mkdir()
    (root / "alias").symlink_to(cache)
    invariants = Invariants(cache, checksums)
    stop = threading.Event()
    watcher = threading.Thread(target=invariants.watch, args=(stop,), daemon=True)
    with LocalHub(hub.state.root) as clean_hub:
        actors = Soak(hub, clean_hub, repos, cache, [cache, root / "alias" / ".." / "alias"], invariants)
        watcher.start()
        try:
            await actors.run(seconds, disk)
            await actors.heal()
        finally:
            stop.set()
            watcher.join()
            actors.close()
    assert not invariants.violations, f"seed {SEED}: " + "\n".join(list(invariants.violations)[:20])
    assert not invariants.damaged, f"seed {SEED}: never repaired: {sorted(invariants.damaged)}"
    assert not list(cache.glob("*/blobs/*.incomplete")), "a partial file was left behind"
    for key, visible in invariants.visible_files():
        assert invariants.check_file(key, visible)
    assert not invariants.violations, f"seed {SEED}: " + "\n".join(list(invariants.violations)[:20])
    for (_, _, kind), n in hub.stats.faults.items():  # what the hub injected and clients met, not what was set up
        invariants.seen[f"fired {kind}"] += n
    return invariants.seen


async def test_soak_faults_second_writer_and_damaged_blobs(hub: LocalHub, soak_repos, tmp_path):
    seen = await soak(hub, soak_repos, tmp_path, seconds=30, disk=None)
    print(dict(seen))
    for happened in ("fetch byte-exact", "hf_hub_download", "blob zero", *(f"fired {kind}" for kind in FAULT_KINDS)):
        assert seen[happened] > 0, (happened, dict(seen))
    # A blob damaged twice before a fetch repairs it counts twice here and is repaired once: that every
    # damage was repaired is ``soak``'s own check (nothing left in ``damaged``).
    assert seen["blob repaired"] > 0, dict(seen)


async def test_soak_disk_full(hub: LocalHub, soak_repos, tmp_path):
    with tmpfs(tmp_path / "disk", size_mb=40) as mounted:
        if not mounted:
            pytest.skip("a disk that fills up needs a small tmpfs: mounting one needs root (CAP_SYS_ADMIN)")
        seen = await soak(hub, soak_repos, tmp_path / "disk", seconds=20, disk=tmp_path / "disk")
    print(dict(seen))
    assert seen[f"typed {OutOfDisk.__name__}"] > 0 and seen["disk filled"] > 0, dict(seen)
    assert seen["fetch byte-exact"] > 0, dict(seen)
    assert seen["fired corrupt"] > 0 and seen["fired drop"] > 0, dict(seen)
