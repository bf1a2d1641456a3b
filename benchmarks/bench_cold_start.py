"""A request to MiniLM scaled to zero against the same request to a warm replica, in one run.

MiniLM (the real all-MiniLM-L6-v2 weights) is served as in the demo, with ``autoscaling:
{min_replicas: 0}``: test hub on loopback, the model's Serve app fetching through the download
service, the OpenAI gateway in front. Deploying starts one replica, which brings the weights into
the node's cache, and stops; then ``--warmup`` untimed requests (the first one wakes the model),
``--warm`` timed requests to the replica it started,
and ``--rounds`` times: wait until ``/v1/models`` says idle, time one request (the cold start).
The goal is under 5 s cold on a 2-core machine.

Where a cold start's time goes, measured in the same run: from the request to the start of the
replica's process (Serve's upscale decision, Ray starting a worker), and from there to the answer.
That second part is then split in fresh Python processes (one per round, medians reported) doing
what a new replica process does, one step at a time: import Ray and Serve, import candle's replica
module, import the engine (sentence-transformers, transformers, torch), load MiniLM from the cache,
embed once. The fetch of the cached repo through this node's downloader (a listing call, no bytes)
is timed too, and what the hub served for MiniLM during the cold starts is printed: bytes (0: the
weights come from the cache), API calls and HEADs.

    python benchmarks/bench_cold_start.py [--rounds 3] [--warm 20] [--warmup 3] [--smoke] [--results FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from benchlib import Report, parse_args, percentile

MODEL = "all-minilm-l6-v2"
SCALING = {
    "min_replicas": 0,
    "max_replicas": 1,
    "downscale_delay_s": 0,
    "look_back_period_s": 2,
    "metrics_interval_s": 0.5,
}
IDLE_TIMEOUT_S = 300
# What a new replica process does before it answers, one timed step at a time (seconds, on one line).
REPLICA_STEPS_IN_A_FRESH_PROCESS = """
import sys, time
from pathlib import Path
marks = [time.perf_counter()]
import ray, ray.serve
marks.append(time.perf_counter())
import deployments.embeddings
marks.append(time.perf_counter())
import candle.engines.embeddings
marks.append(time.perf_counter())
from candle.catalog import ModelSpec
from candle.engines import load_engine
engine = load_engine(ModelSpec.model_validate_json(sys.argv[1]), Path(sys.argv[2]))
marks.append(time.perf_counter())
engine.embed_items(["a cold start"])
marks.append(time.perf_counter())
print(*(b - a for a, b in zip(marks, marks[1:])))
"""
REPLICA_STEPS = (
    "import ray, ray.serve",
    "import candle's replica module",
    "import the engine",
    "load MiniLM",
    "first embedding",
)


def timed_request(http: httpx.Client, base: str) -> float:
    started = time.perf_counter()
    response = http.post(f"{base}/v1/embeddings", json={"model": MODEL, "input": ["a cold start"]})
    response.raise_for_status()
    return time.perf_counter() - started


@dataclass(frozen=True)
class ColdStart:
    took: float  # seconds from the request to its answer
    to_process: float | None  # seconds from the request to the start of the replica process (None: gone unseen)
    load: float  # the machine's 1-minute load average when the request was sent


def replica_steps(spec_json: str, folder: Path) -> list[float]:
    """Seconds of each of ``REPLICA_STEPS`` in a fresh Python process, on the CPU as the replica runs."""
    run = subprocess.run(
        [sys.executable, "-c", REPLICA_STEPS_IN_A_FRESH_PROCESS, spec_json, str(folder)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    return [float(s) for s in run.stdout.split()[-len(REPLICA_STEPS) :]]


def cold_request(http: httpx.Client, base: str) -> ColdStart:
    """Time a request that wakes the model, and when the replica process that answered it started."""
    from candle.testing import replica_processes

    sent, load = time.time(), os.getloadavg()[0]
    took = timed_request(http, base)
    started = [p.create_time() for p in replica_processes(MODEL) if p.create_time() >= sent - 1]
    return ColdStart(took, min(started) - sent if started else None, load)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="cold starts, each after the model went idle")
    parser.add_argument("--warm", type=int, default=20, help="timed requests to the warm replica")
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests before the warm ones")
    args = parse_args(parser, smoke={"rounds": 1, "warm": 3, "warmup": 1})
    report = Report("bench_cold_start: a request to MiniLM scaled to zero vs to a warm replica")

    from candle.catalog import load_catalog
    from candle.demo.hub import LocalHub
    from candle.demo.tiny_models import build_tiny_store
    from candle.download import fetch
    from candle.testing import catalog_apps, free_port, wait_for_models

    workdir = Path(tempfile.mkdtemp(prefix="candle-bench-cold-"))
    store = workdir / "store"
    build_tiny_store(store, ["minilm"])
    catalog = {"models": [{**load_catalog("demo").get(MODEL).model_dump(), "autoscaling": SCALING}]}
    spec = load_catalog(catalog).models[0]

    with LocalHub(store) as hub:
        os.environ.update(HF_ENDPOINT=hub.endpoint, HF_HUB_CACHE=str(workdir / "hf-cache"), HF_HUB_DISABLE_XET="1")
        import ray
        from ray import serve

        from candle.testing.cluster import start_local_ray

        start_local_ray(num_cpus=4, include_dashboard=False, log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        base = f"http://127.0.0.1:{port}"
        with catalog_apps(catalog, "gateway", "/"), httpx.Client(timeout=IDLE_TIMEOUT_S) as http:
            # The first replica fetches the weights, and stops once done: no request has come yet.
            wait_for_models(base, {MODEL: "idle"}, IDLE_TIMEOUT_S)
            for _ in range(args.warmup):
                timed_request(http, base)
            warm = [timed_request(http, base) for _ in range(args.warm)]
            cold: list[ColdStart] = []
            hub.reset()
            for _ in range(args.rounds):
                wait_for_models(base, {MODEL: "idle"}, IDLE_TIMEOUT_S)
                cold.append(cold_request(http, base))
            cold_hub_bytes = hub.stats.bytes_for(spec.repo_id)
            cold_hub_calls = hub.stats.api_calls[spec.repo_id]
            cold_hub_heads = sum(n for (repo, _), n in hub.stats.heads.items() if repo == spec.repo_id)
            started = time.perf_counter()
            folder = asyncio.run(fetch(spec.repo_id, revision=spec.revision))
            cached_fetch = time.perf_counter() - started
        serve.shutdown()
        ray.shutdown()
    steps_load = os.getloadavg()[0]
    steps = [replica_steps(spec.model_dump_json(), folder) for _ in range(args.rounds)]

    report(f"model {MODEL} ({spec.repo_id}), autoscaling {SCALING}, replica num_cpus {spec.resources.num_cpus}")
    report(f"warm: {args.warmup} untimed requests, then {args.warm} timed; cold: {args.rounds} starts from idle")
    report(f"warm request  p50 {percentile(warm, 0.5) * 1000:8.1f} ms   max {max(warm) * 1000:8.1f} ms")
    took = [c.took for c in cold]
    report(
        f"cold request  median {statistics.median(took):6.2f} s    each "
        + ", ".join(f"{c:.2f} s" for c in took)
        + f"   (hub for them: {cold_hub_bytes} bytes, {cold_hub_calls} API calls, {cold_hub_heads} HEADs)"
    )
    report("  each cold request: to the start of the replica's process (Serve's upscale decision, Ray starting")
    report("  a worker) + from there to the answer:")
    for c in cold:
        split = (
            f"{c.to_process:.2f} s + {c.took - c.to_process:.2f} s" if c.to_process is not None else "process not seen"
        )
        report(f"    {c.took:.2f} s = {split}   (load average {c.load:.1f})")
    report(
        f"  a new replica process's steps, each the median of {args.rounds} fresh processes"
        f" (load average {steps_load:.1f} before, {os.getloadavg()[0]:.1f} after):"
    )
    for name, *seconds in zip(REPLICA_STEPS, *steps, strict=True):
        report(f"    {name:32s} {statistics.median(seconds):6.2f} s   (each {', '.join(f'{s:.2f}' for s in seconds)})")
    report(f"  cached fetch through the downloader {cached_fetch:.2f} s")
    report("goal: cold under 5 s")
    report.save(args.results)


if __name__ == "__main__":
    main()
