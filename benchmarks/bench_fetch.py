"""candle's ``fetch`` against plain ``huggingface_hub.snapshot_download``, over loopback, same run.

Two repos are served by the test hub in its own process: one 1 GB file, and 16 shards of 64 MB.
Each is fetched into a fresh cache by candle (through the node's download actor, verification
included) and by ``snapshot_download`` (8 workers, its default), ``--rounds`` times each, the order
alternating per round. Both are measured alike: one untimed warm-up fetch each first (candle starts
its node actor, huggingface_hub its HTTP session), the same number of timed passes, and the median.
Printed: median wall times, their ratio (goal: candle / hf <= 1.05), and the lag of the caller's
event loop while it awaits the fetch (p99 and worst; goal: under 5 ms), next to the same for
``snapshot_download`` run in a worker thread, as an async caller would have to.

Then the same against a second test hub that caps each connection at ``--connection-rate-mb``
(16 MiB/s, as CDNs cap each stream): one 512 MB file (goal: candle at least 4x faster, since
``snapshot_download`` uses one connection per file) and 8 shards of 64 MB (goal: 1.5x). candle's
node runs with ``--connections`` (16) connections per file and per node, in ``--range-mb`` (16 MiB) ranges.

Both are told the hub's address explicitly: huggingface_hub reads ``HF_ENDPOINT`` once, at import.

    python benchmarks/bench_fetch.py [--scale 0.25] [--rounds 2] [--connections 16]
        [--connection-rate-mb 16] [--range-mb 16] [--smoke] [--results FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import Report, parse_args, percentile

MB = 1024 * 1024
LAG_TICK_S = 0.005
KINDS = ("candle", "hf")
WARMUP_REPO = "bench/warmup"
CAPPED = ("bench/single-512mb", "bench/sharded-8x64mb")  # fetched from the hub that caps each connection


def build_store(root: Path, scale: float) -> dict[str, int]:
    """Write the benchmark's repos (and the small warm-up repo); return each benchmarked repo's size."""
    from candle.demo.hub import write_random_file

    repos = {"bench/single-1gb": {"model.safetensors": int(1024 * MB * scale)}}
    repos["bench/sharded-16x64mb"] = {f"model-{i:05d}-of-00016.safetensors": int(64 * MB * scale) for i in range(1, 17)}
    repos[CAPPED[0]] = {"model.safetensors": int(512 * MB * scale)}
    repos[CAPPED[1]] = {f"model-{i:05d}-of-00008.safetensors": int(64 * MB * scale) for i in range(1, 9)}
    repos[WARMUP_REPO] = {"model.safetensors": 4 * MB}
    sizes = {}
    for repo_id, files in repos.items():
        (root / repo_id).mkdir(parents=True, exist_ok=True)
        (root / repo_id / "config.json").write_text('{"bench": true}')
        for seed, (name, size) in enumerate(files.items()):
            write_random_file(root / repo_id / name, size, seed=seed)
        sizes[repo_id] = sum(files.values())
    del sizes[WARMUP_REPO]
    return sizes


def start_hub(root: Path, connection_rate_mb: float | None = None) -> tuple[subprocess.Popen, str]:
    cap = ["--connection-rate-mb", str(connection_rate_mb)] if connection_rate_mb else []
    hub = subprocess.Popen(
        [sys.executable, "-m", "candle.demo.hub", str(root), *cap], stdout=subprocess.PIPE, text=True
    )
    endpoint = hub.stdout.readline().strip()
    return hub, endpoint


class LoopLag:
    """How late a 5 ms tick of the caller's event loop fires while something is awaited."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._done = asyncio.Event()

    async def _watch(self) -> None:
        while not self._done.is_set():
            before = time.perf_counter()
            await asyncio.sleep(LAG_TICK_S)
            self.lags.append(time.perf_counter() - before - LAG_TICK_S)

    async def measure(self, awaitable) -> float:
        watcher = asyncio.create_task(self._watch())
        started = time.perf_counter()
        await awaitable
        elapsed = time.perf_counter() - started
        self._done.set()
        await watcher
        return elapsed


def lag_text(runs: list[tuple[float, LoopLag]]) -> str:
    """p99/worst loop lag in ms over all rounds of one kind."""
    p99 = max(percentile(lag.lags, 0.99) for _, lag in runs) * 1000
    worst = max(max(lag.lags, default=0.0) for _, lag in runs) * 1000
    return f"{p99:.1f}/{worst:.1f}"


async def timed(kind: str, repo_id: str, cache_dir: Path, endpoint: str) -> tuple[float, LoopLag]:
    """Wall time of one fetch (candle through the node actor, hf in a worker thread) and the loop's lag."""
    from huggingface_hub import snapshot_download

    from candle.download import fetch

    lag = LoopLag()
    if kind == "candle":
        elapsed = await lag.measure(fetch(repo_id, cache_dir=cache_dir, endpoint=endpoint))
    else:
        elapsed = await lag.measure(
            asyncio.to_thread(snapshot_download, repo_id, cache_dir=cache_dir, endpoint=endpoint)
        )
    return elapsed, lag


def compare(report: Report, sizes: dict[str, int], endpoint: str, rounds: int, workdir: Path) -> None:
    """One table row per repo: median wall times of both, their ratio, and the caller's loop lag."""
    report(
        f"{'repo':<24}{'size':>8}{'candle s':>10}{'hf s':>8}{'ratio':>7}"
        f"{'lag p99/max ms: candle':>24}{'hf (thread)':>14}"
    )
    for repo_id, size in sizes.items():
        runs: dict[str, list[tuple[float, LoopLag]]] = {kind: [] for kind in KINDS}
        for round_ in range(rounds):
            for kind in KINDS[:: 1 if round_ % 2 == 0 else -1]:
                runs[kind].append(asyncio.run(timed(kind, repo_id, workdir / kind, endpoint)))
                shutil.rmtree(workdir / kind)
        candle_s = statistics.median(t for t, _ in runs["candle"])
        hf_s = statistics.median(t for t, _ in runs["hf"])
        report(
            f"{repo_id:<24}{size / MB:>6.0f}MB{candle_s:>10.2f}{hf_s:>8.2f}{candle_s / hf_s:>7.2f}"
            f"{lag_text(runs['candle']):>24}{lag_text(runs['hf']):>14}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="shrink the repos (0.25: 256 MB and 16 x 16 MB)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16, help="candle's connections per file and per node")
    parser.add_argument("--connection-rate-mb", type=float, default=16.0, help="the capped hub's MiB/s per connection")
    parser.add_argument(
        "--range-mb", type=float, default=16.0, help="candle fetches a larger file in ranges of this size"
    )
    parser.add_argument("--workdir", type=Path, default=None)
    args = parse_args(parser, smoke={"scale": 0.002, "rounds": 1, "connection_rate_mb": 1.0, "range_mb": 0.125})
    report = Report("bench_fetch: candle fetch vs huggingface_hub.snapshot_download")

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="candle-bench-"))
    store = workdir / "store"
    sizes = build_store(store, args.scale)
    hub, endpoint = start_hub(store)
    capped_hub, capped_endpoint = start_hub(store, args.connection_rate_mb)
    # For the Ray workers started below (the node's download actor); this process's huggingface_hub
    # was imported already and gets the endpoint as an argument instead.
    os.environ.update({"HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    connections = str(args.connections)
    os.environ.update(
        {
            "CANDLE_DOWNLOAD_CONNECTIONS_PER_FILE": connections,
            "CANDLE_DOWNLOAD_MAX_CONNECTIONS": connections,
            "CANDLE_DOWNLOAD_RANGE_SIZE": str(int(args.range_mb * MB)),
        }
    )
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()

    import ray

    from candle.testing.cluster import start_local_ray

    start_local_ray(include_dashboard=False, log_to_driver=False)
    try:
        for kind in KINDS:  # first-call costs (candle's node actor, hf's session) stay out of the timings
            asyncio.run(timed(kind, WARMUP_REPO, workdir / "warmup", endpoint))
            shutil.rmtree(workdir / "warmup")
        report(f"{args.rounds} timed rounds each after one warm-up fetch each; order alternates; medians")
        report(f"candle: {args.connections} connections per file and per node, ranges of {args.range_mb:g} MiB")
        compare(report, {r: n for r, n in sizes.items() if r not in CAPPED}, endpoint, args.rounds, workdir)
        report("goals: ratio <= 1.05 (candle verifies every byte, hf checks sizes only); caller loop lag p99 < 5 ms")
        report()
        report(f"the hub caps each connection at {args.connection_rate_mb:g} MiB/s")
        compare(report, {r: sizes[r] for r in CAPPED}, capped_endpoint, args.rounds, workdir)
        report("goals: ratio <= 0.25 for one file (hf: one connection per file), <= 0.67 for 8 shards")
    finally:
        ray.shutdown()
        hub.terminate()
        capped_hub.terminate()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    report.save(args.results)


if __name__ == "__main__":
    main()
