"""candle's ``fetch`` against plain ``huggingface_hub.snapshot_download``, over loopback, same run.

Two repos are served by the test hub in its own process: one 1 GB file, and 16 shards of 64 MB.
Each is fetched into a fresh cache by candle (through the node's download actor, verification
included) and by ``snapshot_download`` (8 workers, its default), ``--rounds`` times each, the order
alternating per round. Both are measured alike: one untimed warm-up fetch each first (candle starts
its node actor, huggingface_hub its HTTP session), the same number of timed passes, and the median.
Printed: median wall times, their ratio (goal: candle / hf <= 1.10), and the lag of the caller's
event loop while it awaits the fetch (p99 and worst; goal: under 20 ms), next to the same for
``snapshot_download`` run in a worker thread, as an async caller would have to.

Both are told the hub's address explicitly: huggingface_hub reads ``HF_ENDPOINT`` once, at import.

    python benchmarks/bench_fetch.py [--scale 0.25] [--rounds 2] [--smoke] [--results FILE]
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


def build_store(root: Path, scale: float) -> dict[str, int]:
    """Write the benchmark's repos (and the small warm-up repo); return each benchmarked repo's size."""
    from candle.demo.hub import write_random_file

    repos = {"bench/single-1gb": {"model.safetensors": int(1024 * MB * scale)}}
    repos["bench/sharded-16x64mb"] = {f"model-{i:05d}-of-00016.safetensors": int(64 * MB * scale) for i in range(1, 17)}
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


def start_hub(root: Path) -> tuple[subprocess.Popen, str]:
    hub = subprocess.Popen([sys.executable, "-m", "candle.demo.hub", str(root)], stdout=subprocess.PIPE, text=True)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="shrink the repos (0.25: 256 MB and 16 x 16 MB)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parse_args(parser, smoke={"scale": 0.002, "rounds": 1})
    report = Report("bench_fetch: candle fetch vs huggingface_hub.snapshot_download")

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="candle-bench-"))
    store = workdir / "store"
    sizes = build_store(store, args.scale)
    hub, endpoint = start_hub(store)
    # For the Ray workers started below (the node's download actor); this process's huggingface_hub
    # was imported already and gets the endpoint as an argument instead.
    os.environ.update({"HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
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
        report(
            f"{'repo':<24}{'size':>8}{'candle s':>10}{'hf s':>8}{'ratio':>7}"
            f"{'lag p99/max ms: candle':>24}{'hf (thread)':>14}"
        )
        for repo_id, size in sizes.items():
            runs: dict[str, list[tuple[float, LoopLag]]] = {kind: [] for kind in KINDS}
            for round_ in range(args.rounds):
                for kind in KINDS[:: 1 if round_ % 2 == 0 else -1]:
                    runs[kind].append(asyncio.run(timed(kind, repo_id, workdir / kind, endpoint)))
                    shutil.rmtree(workdir / kind)
            candle_s = statistics.median(t for t, _ in runs["candle"])
            hf_s = statistics.median(t for t, _ in runs["hf"])
            report(
                f"{repo_id:<24}{size / MB:>6.0f}MB{candle_s:>10.2f}{hf_s:>8.2f}{candle_s / hf_s:>7.2f}"
                f"{lag_text(runs['candle']):>24}{lag_text(runs['hf']):>14}"
            )
        report("goals: ratio <= 1.10 (candle verifies every byte, hf checks sizes only); caller loop lag < 20 ms")
    finally:
        ray.shutdown()
        hub.terminate()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    report.save(args.results)


if __name__ == "__main__":
    main()
