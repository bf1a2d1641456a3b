"""candle's ``fetch`` against plain ``huggingface_hub.snapshot_download``, over loopback, same run.

Two repos are served by the test hub in its own process: one 1 GB file, and 16 shards of 64 MB.
Each is fetched into a fresh cache by candle (through the node's download actor, verification
included) and by ``snapshot_download`` (8 workers, its default), alternating, ``--rounds`` times.
Printed: median wall times, their ratio (goal: candle / hf <= 1.10), and the worst event-loop lag
the caller saw while awaiting ``fetch`` (goal: under 20 ms).

    python benchmarks/bench_fetch.py [--scale 0.25] [--rounds 2]
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

MB = 1024 * 1024
LAG_TICK_S = 0.005


def build_store(root: Path, scale: float) -> dict[str, int]:
    from candle.testing.hub import write_random_file

    repos = {"bench/single-1gb": {"model.safetensors": int(1024 * MB * scale)}}
    repos["bench/sharded-16x64mb"] = {f"model-{i:05d}-of-00016.safetensors": int(64 * MB * scale) for i in range(1, 17)}
    sizes = {}
    for repo_id, files in repos.items():
        (root / repo_id).mkdir(parents=True, exist_ok=True)
        (root / repo_id / "config.json").write_text('{"bench": true}')
        for seed, (name, size) in enumerate(files.items()):
            write_random_file(root / repo_id / name, size, seed=seed)
        sizes[repo_id] = sum(files.values())
    return sizes


def start_hub(root: Path) -> tuple[subprocess.Popen, str]:
    hub = subprocess.Popen([sys.executable, "-m", "candle.testing.hub", str(root)], stdout=subprocess.PIPE, text=True)
    endpoint = hub.stdout.readline().strip()
    return hub, endpoint


async def candle_fetch(repo_id: str, cache_dir: Path) -> tuple[float, float]:
    """Wall time of ``fetch`` and the worst lag of the caller's event loop meanwhile."""
    from candle.download import fetch

    worst_lag = 0.0
    done = asyncio.Event()

    async def watch_loop() -> None:
        nonlocal worst_lag
        while not done.is_set():
            before = time.perf_counter()
            await asyncio.sleep(LAG_TICK_S)
            worst_lag = max(worst_lag, time.perf_counter() - before - LAG_TICK_S)

    watcher = asyncio.create_task(watch_loop())
    started = time.perf_counter()
    await fetch(repo_id, cache_dir=cache_dir)
    elapsed = time.perf_counter() - started
    done.set()
    await watcher
    return elapsed, worst_lag


def hf_fetch(repo_id: str, cache_dir: Path) -> float:
    from huggingface_hub import snapshot_download

    started = time.perf_counter()
    snapshot_download(repo_id, cache_dir=cache_dir)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="shrink the repos (0.25: 256 MB and 16 x 16 MB)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="candle-bench-"))
    store = workdir / "store"
    sizes = build_store(store, args.scale)
    hub, endpoint = start_hub(store)
    os.environ.update({"HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"})

    import ray

    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        # The node's actor starts once per node; a replica pays that once, so it is warmed up here.
        asyncio.run(candle_fetch("bench/single-1gb", workdir / "warmup"))
        shutil.rmtree(workdir / "warmup")
        print(f"{'repo':<24}{'size':>10}{'candle s':>10}{'hf s':>9}{'ratio':>8}{'worst lag ms':>14}")
        for repo_id, size in sizes.items():
            candle_times, hf_times, lags = [], [], []
            for _ in range(args.rounds):
                elapsed, lag = asyncio.run(candle_fetch(repo_id, workdir / "candle"))
                candle_times.append(elapsed)
                lags.append(lag)
                hf_times.append(hf_fetch(repo_id, workdir / "hf"))
                shutil.rmtree(workdir / "candle")
                shutil.rmtree(workdir / "hf")
            candle_s, hf_s = statistics.median(candle_times), statistics.median(hf_times)
            print(
                f"{repo_id:<24}{size / MB:>8.0f}MB{candle_s:>10.2f}{hf_s:>9.2f}"
                f"{candle_s / hf_s:>8.2f}{max(lags) * 1000:>14.1f}"
            )
        print("goals: ratio <= 1.10 (candle verifies every byte, hf checks sizes only); worst lag < 20 ms")
    finally:
        ray.shutdown()
        hub.terminate()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
