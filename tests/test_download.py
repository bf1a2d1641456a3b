"""The node download service against the fault-injecting test hub, through real Ray actors."""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import time
from pathlib import Path

import httpx
import pytest
import ray
from huggingface_hub import scan_cache_dir, snapshot_download

from candle.demo.hub import Fault, LocalHub
from candle.download import (
    AccessDenied,
    IntegrityError,
    OutOfDisk,
    RemoteFileNotFound,
    RepoNotFound,
    RevisionNotFound,
    fetch,
    node_downloader,
)
from candle.download.client import make_request
from candle.download.cluster.factory import DownloaderActor
from candle.download.downloader import NodeDownloader
from tests.conftest import GATED_REPO, HUB_TOKEN, RepoFactory

pytestmark = pytest.mark.usefixtures("ray_cluster")

MB = 1024 * 1024


def assert_same_files(snapshot: Path, source: dict[str, Path]) -> None:
    assert sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()) == sorted(source)
    for rel, src in source.items():
        assert (snapshot / rel).read_bytes() == src.read_bytes(), rel


async def wait_until_downloading(repo_id: str, path: str, timeout: float = 20) -> None:
    """Return once the node's downloader reports a transfer of ``path`` in flight."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for repo in await node_downloader().progress.remote(repo_id):
            if any(f.path == path and f.state == "downloading" for f in repo.files):
                return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{repo_id}/{path} never started downloading")


@ray.remote(num_cpus=0)
class Gate:
    """Holds every fetcher until all are running, so their fetches really are concurrent."""

    def __init__(self) -> None:
        self.arrived = 0
        self.open = asyncio.Event()

    async def arrive(self) -> int:
        self.arrived += 1
        return self.arrived

    async def count(self) -> int:
        return self.arrived

    async def release(self) -> None:
        self.open.set()

    async def wait(self) -> None:
        await self.open.wait()


@ray.remote(num_cpus=0.25)
def fetch_many(gate, repo_id: str, cache_dir: str, n: int) -> list[str]:
    async def run() -> list[str]:
        await gate.arrive.remote()
        await gate.wait.remote()
        paths = await asyncio.gather(*(fetch(repo_id, cache_dir=cache_dir) for _ in range(n)))
        return [str(p) for p in paths]

    return asyncio.run(run())


async def test_sixteen_concurrent_fetches_transfer_each_file_once(
    hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path
):
    source = make_repo(
        {"model-00001-of-00002.safetensors": 6 * MB, "model-00002-of-00002.safetensors": 4 * MB},
        {"config.json": b'{"a": 1}', "tokenizer.json": b'{"model": {}}', "nested/readme.txt": b"hello"},
    )
    hub.state.bandwidth = 20 * MB  # keeps the transfers in flight while all 16 requests arrive
    gate = Gate.remote()
    tasks = [fetch_many.remote(gate, repo_name, str(tmp_path), 4) for _ in range(4)]
    while await gate.count.remote() < 4:
        await asyncio.sleep(0.05)
    await gate.release.remote()
    results = [path for task in await asyncio.gather(*tasks) for path in task]

    assert len(results) == 16 and len(set(results)) == 1
    assert hub.stats.bodies_for(repo_name) == dict.fromkeys(source, 1)
    assert_same_files(Path(results[0]), source)


async def test_overlapping_requests_share_the_common_transfer(
    hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path
):
    source = make_repo({"model.safetensors": 2 * MB}, {"config.json": b"{" + b" " * (1 * MB) + b"}"})
    hub.state.bandwidth = 1 * MB
    whole = asyncio.ensure_future(fetch(repo_name, cache_dir=tmp_path))
    await wait_until_downloading(repo_name, "config.json")
    config_only = await fetch(repo_name, cache_dir=tmp_path, allow_patterns="config.json")
    assert (config_only / "config.json").read_bytes() == source["config.json"].read_bytes()
    assert config_only == await whole
    assert hub.stats.bodies_for(repo_name) == {"config.json": 1, "model.safetensors": 1}


async def test_corrupted_transfer_is_detected_and_retried(hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path):
    source = make_repo({"model.safetensors": 3 * MB})
    hub.state.add_fault(Fault("corrupt", path="model.safetensors", times=1))
    snapshot = await fetch(repo_name, cache_dir=tmp_path)
    assert_same_files(snapshot, source)
    assert hub.stats.bodies_for(repo_name)["model.safetensors"] == 2


async def test_corruption_on_every_try_raises_and_publishes_nothing(
    hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path
):
    make_repo({"model.safetensors": 1 * MB}, texts={})
    hub.state.add_fault(Fault("corrupt", path="model.safetensors", times=None))
    with pytest.raises(IntegrityError) as excinfo:
        await fetch(repo_name, cache_dir=tmp_path)
    message = str(excinfo.value)
    assert repo_name in message and "model.safetensors" in message and "checksum" in message
    assert not list(tmp_path.rglob("snapshots/*/model.safetensors"))
    assert not [p for p in tmp_path.rglob("blobs/*")], "no blob, verified or partial, is left behind"
    assert hub.stats.bodies_for(repo_name)["model.safetensors"] == 4  # CANDLE_DOWNLOAD_MAX_ATTEMPTS


async def test_dropped_connection_resumes_where_it_stopped(hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path):
    source = make_repo({"model.safetensors": 4 * MB})
    hub.state.add_fault(Fault("drop", path="model.safetensors", at=0.5))
    snapshot = await fetch(repo_name, cache_dir=tmp_path)
    assert_same_files(snapshot, source)
    assert hub.stats.bodies[(repo_name, "model.safetensors")] == 2
    # resumed, not restarted: at most one unflushed read chunk is fetched twice
    assert hub.stats.body_bytes[(repo_name, "model.safetensors")] <= 4 * MB + 1 * MB


async def test_429_waits_for_retry_after(hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path):
    source = make_repo({"model.safetensors": 1 * MB})
    hub.state.add_fault(Fault("429", path="model.safetensors", retry_after=2))
    started = time.monotonic()
    snapshot = await fetch(repo_name, cache_dir=tmp_path)
    assert time.monotonic() - started >= 2.0
    assert_same_files(snapshot, source)


async def test_server_errors_are_retried(hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path):
    source = make_repo({"model.safetensors": 1 * MB})
    hub.state.add_fault(Fault("500", path="model.safetensors", times=2, retry_after=None))
    snapshot = await fetch(repo_name, cache_dir=tmp_path)
    assert_same_files(snapshot, source)
    assert hub.stats.faults == {(repo_name, "model.safetensors", "500"): 2}
    assert hub.stats.bodies_for(repo_name) == {"config.json": 1, "model.safetensors": 1}


async def test_stalled_transfer_is_retried(hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path):
    source = make_repo({"model.safetensors": 2 * MB})
    hub.state.add_fault(Fault("stall", path="model.safetensors", at=0.3, stall_seconds=60))
    started = time.monotonic()
    snapshot = await fetch(repo_name, cache_dir=tmp_path)
    assert time.monotonic() - started < 30  # the 2 s stall timeout fired long before the hub gave up
    assert_same_files(snapshot, source)
    assert hub.stats.bodies[(repo_name, "model.safetensors")] == 2


async def test_actor_answers_while_a_large_transfer_runs(hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path):
    """Its loop is never blocked by the transfer: pings and progress calls are answered mid-transfer.

    (How fast it answers is measured by benchmarks, not asserted here.)
    """
    make_repo({"model.safetensors": 200 * MB})
    hub.state.bandwidth = 80 * MB
    downloader = node_downloader()
    transfer = asyncio.ensure_future(fetch(repo_name, cache_dir=tmp_path))
    await wait_until_downloading(repo_name, "model.safetensors")
    answered_mid_transfer: set[int] = set()  # distinct byte counts reported while bytes were arriving
    while not transfer.done():
        await downloader.ping.remote()
        (repo,) = await downloader.progress.remote(repo_name)
        (weights,) = [f for f in repo.files if f.path == "model.safetensors"]
        if weights.state == "downloading" and 0 < weights.bytes_done < 200 * MB:
            answered_mid_transfer.add(weights.bytes_done)
        await asyncio.sleep(0.005)
    await transfer
    assert len(answered_mid_transfer) >= 10, sorted(answered_mid_transfer)


async def test_cached_fetch_downloads_no_file_bodies(hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path):
    source = make_repo({"model.safetensors": 1 * MB}, {"config.json": b"{}", "tokenizer.json": b'{"v": 1}'})
    first = await fetch(repo_name, cache_dir=tmp_path)
    served = sum(hub.stats.bodies.values())
    second = await fetch(repo_name, cache_dir=tmp_path)
    assert second == first
    assert sum(hub.stats.bodies.values()) == served == len(source)


async def test_cancelled_waiter_does_not_cancel_the_transfer(
    hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path
):
    source = make_repo({"model.safetensors": 6 * MB})
    hub.state.bandwidth = 3 * MB
    downloader = node_downloader()
    request = make_request(repo_name, cache_dir=tmp_path)
    doomed = downloader.fetch.remote(request)
    survivor = downloader.fetch.remote(request)
    await wait_until_downloading(repo_name, "model.safetensors")
    ray.cancel(doomed)
    with pytest.raises((ray.exceptions.TaskCancelledError, asyncio.CancelledError)):
        await doomed
    snapshot = Path(await survivor)
    assert_same_files(snapshot, source)
    assert hub.stats.bodies_for(repo_name) == {"config.json": 1, "model.safetensors": 1}


async def test_snapshot_is_a_standard_hf_cache_entry(hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path):
    source = make_repo({"model.safetensors": 1 * MB}, {"config.json": b"{}", "sub/vocab.txt": b"a\nb\n"})
    snapshot = await fetch(repo_name, cache_dir=tmp_path)
    offline = snapshot_download(repo_name, cache_dir=tmp_path, local_files_only=True)
    assert Path(offline) == snapshot
    (entry,) = [r for r in scan_cache_dir(tmp_path).repos if r.repo_id == repo_name]
    assert entry.size_on_disk == sum(p.stat().st_size for p in source.values())
    assert (tmp_path / f"models--{repo_name.replace('/', '--')}" / "refs" / "main").read_text() == snapshot.name


async def test_unknown_repo_names_the_repo(hub: LocalHub, tmp_path):
    with pytest.raises(RepoNotFound, match="test/does-not-exist"):
        await fetch("test/does-not-exist", cache_dir=tmp_path)


async def test_unknown_revision_and_file(hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path):
    make_repo()
    with pytest.raises(RevisionNotFound, match=repo_name):
        await fetch(repo_name, revision="no-such-branch", cache_dir=tmp_path)
    with pytest.raises(RemoteFileNotFound, match=f"{repo_name}/missing.bin"):
        await fetch(repo_name, allow_patterns=["missing.bin"], cache_dir=tmp_path)


async def test_gated_repo_needs_a_token_that_is_never_shown(hub: LocalHub, tmp_path):
    with pytest.raises(AccessDenied, match=GATED_REPO) as excinfo:
        await fetch(GATED_REPO, cache_dir=tmp_path, token="hf_wrong_token_abcdef")
    assert "hf_wrong_token_abcdef" not in str(excinfo.value)
    snapshot = await fetch(GATED_REPO, cache_dir=tmp_path, token=HUB_TOKEN)
    assert (snapshot / "config.json").read_bytes() == b'{"gated": true}'
    progress = await node_downloader().progress.remote(GATED_REPO)
    assert HUB_TOKEN not in repr(progress)
    assert HUB_TOKEN not in repr(make_request(GATED_REPO, token=HUB_TOKEN))


async def test_out_of_disk_is_refused_before_transfer(hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path):
    make_repo({"model.safetensors": 1 * MB})
    from candle.download import DownloaderSettings
    from candle.download.downloader import NodeDownloader

    greedy = ray.remote(NodeDownloader).options(num_cpus=0).remote(DownloaderSettings(reserve_bytes=2**62))
    with pytest.raises(OutOfDisk, match=repo_name) as excinfo:
        await greedy.fetch.remote(make_request(repo_name, cache_dir=tmp_path))
    assert "free" in str(excinfo.value)
    assert hub.stats.bodies_for(repo_name) == {}
    assert os.listdir(tmp_path / f"models--{repo_name.replace('/', '--')}" / "blobs") == []


async def test_progress_is_reported_while_a_fetch_runs(hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path):
    make_repo({"model.safetensors": 6 * MB})
    hub.state.bandwidth = 3 * MB
    seen: list[dict] = []
    await fetch(repo_name, cache_dir=tmp_path, on_progress=seen.append, progress_interval_s=0.2)
    downloading = [p for p in seen if p.state == "downloading"]
    assert len(downloading) >= 3
    done = [p.bytes_done for p in downloading]
    assert done == sorted(done) and done[-1] > done[0]
    assert {p.bytes_total for p in downloading} == {6 * MB + len(b'{"hidden_size": 8}')}
    assert any(p.rate > 0 and p.eta_s for p in downloading)


def candle_series(exposition: str, repo_id: str) -> dict[str, float]:
    """``name`` (plus ``:state`` for the state gauge) -> value, for candle's series of one repo."""
    series = {}
    for line in exposition.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith("ray_candle_download_") and f'repo_id="{repo_id}"' in name:
            state = re.search(r'state="(\w+)"', name)
            series[name.split("{")[0] + (f":{state[1]}" if state else "")] = float(value)
    return series


async def test_progress_is_exported_as_prometheus_metrics(ray_cluster, hub: LocalHub, make_repo, repo_name, tmp_path):
    make_repo({"model.safetensors": 2 * MB})
    await fetch(repo_name, cache_dir=tmp_path)
    total = float(2 * MB + len(b'{"hidden_size": 8}'))
    expected = {
        "ray_candle_download_bytes_done": total,
        "ray_candle_download_bytes_total": total,
        "ray_candle_download_state:done": 1.0,
        "ray_candle_download_state:downloading": 0.0,
    }
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient() as client:
        while True:  # Ray's agent exports every second here; the downloader publishes every 2 s
            exposition = (await client.get(ray_cluster["METRICS_URL"])).text
            series = candle_series(exposition, repo_name)
            if all(series.get(k) == v for k, v in expected.items()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    assert {k: series.get(k) for k in expected} == expected
    assert re.search(r'^ray_candle_download_source_bytes_total\{.*source="hub".*\} [1-9]', exposition, re.M)
    # A node that serves no peer exports its upload rate as 0 (its byte counter appears only once it counts).
    assert re.search(r"^ray_candle_download_peer_upload_rate_bytes_per_second\{.*\} 0\.0$", exposition, re.M)


def test_the_downloader_actor_forwards_every_remote_method_of_the_downloader():
    """Ray runs ``DownloaderActor`` (importable under any huggingface_hub); a coroutine added to
    ``NodeDownloader`` and not forwarded would be unreachable from replicas and the CLI."""

    def remote_methods(cls: type) -> set[str]:
        return {n for n, f in inspect.getmembers(cls, inspect.iscoroutinefunction) if not n.startswith("_")}

    assert remote_methods(NodeDownloader) == remote_methods(DownloaderActor)
