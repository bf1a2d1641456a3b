"""A request to an idle model: MiniLM scaled to zero, and MiniLM, a tiny chat model and a tiny SD3
pipeline in warm pools, each against the same request to a warm replica, in one run.

MiniLM (the real all-MiniLM-L6-v2 weights) is served as in the demo, with ``autoscaling:
{min_replicas: 0}``: test hub on loopback, the model's Serve app fetching through the download
service, the OpenAI gateway in front. Deploying starts one replica, which brings the weights into
the node's cache, and stops; then ``--warmup`` untimed requests (the first one wakes the model),
``--warm`` timed requests to the replica it started,
and ``--rounds`` times: wait until ``/v1/models`` says idle, time one request (the cold start).

Warm pools (issue 23): the same MiniLM in a pool of its own, and the demo's tiny Qwen3 chat model
and tiny SD3 pipeline in another, both with ``idle_after_s`` of 1 s. For each pooled model: untimed
requests (the first loads it; the chat model and the pipeline fetch their weights then), ``--warm``
timed ones, and ``--pool-rounds`` times: wait until ``/v1/models`` says idle (unloaded), time one
request (a load from the node's cache in a replica that has its libraries imported). The pool
replica's memory (RSS) is read before each load, once the model is loaded, and after it unloaded
again. Goals: pooled MiniLM under 1 s cold, the chat model and the pipeline under 2 s, the memory
after an unload within 10% of before the load, 0 hub bytes.

Where a cold start's time goes, measured in the same run: from the request to the start of the
replica's process (Serve's upscale decision, Ray starting a worker), and from there to the answer.
That second part is then split in fresh Python processes (one per round, medians reported) doing
what a new replica process does, one step at a time: import Ray and Serve, import candle's replica
module, import the engine (sentence-transformers, transformers, torch), load MiniLM from the cache,
embed once. The fetch of the cached repo through this node's downloader (a listing call, no bytes)
is timed too, and what the hub served for MiniLM during the cold starts is printed: bytes (0: the
weights come from the cache), API calls and HEADs.

    python benchmarks/bench_cold_start.py [--rounds 3] [--pool-rounds 5] [--warm 20] [--warmup 3]
        [--smoke] [--results FILE]
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
from typing import Any

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
POOL_IDLE_AFTER_S = 1.0
POOLS = {
    "bench-embedders": {"resources": {"num_cpus": 0.25}, "idle_after_s": POOL_IDLE_AFTER_S},
    "bench-generators": {"resources": {"num_cpus": 0.5}, "idle_after_s": POOL_IDLE_AFTER_S},
}
# Pooled model -> (the demo entry it copies, its pool, the goal for a request to it idle, seconds).
POOLED = {
    "pooled-minilm": (MODEL, "bench-embedders", 1.0),
    "pooled-qwen3": ("qwen3-coder-tiny", "bench-generators", 2.0),
    "pooled-sd3": ("sd3.5-turbo-tiny", "bench-generators", 2.0),
}
# What a new replica process does before it answers, one timed step at a time (seconds, on one line).
REPLICA_STEPS_IN_A_FRESH_PROCESS = """
import sys, time
from pathlib import Path
marks = [time.perf_counter()]
import ray, ray.serve
marks.append(time.perf_counter())
import deployments.replicas.embedding
marks.append(time.perf_counter())
import candle.engines.embedding.sentence_transformers
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


def request_for(capability: str, model: str) -> tuple[str, dict[str, Any]]:
    """The route and the smallest body that makes ``model`` do its work once."""
    if capability == "text-to-text":
        return "chat/completions", {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    if capability == "text-to-image":
        return "images/generations", {"model": model, "prompt": "a lighthouse", "size": "64x64"}
    return "embeddings", {"model": model, "input": ["a cold start"]}


def timed_request(http: httpx.Client, base: str, model: str = MODEL, capability: str = "text-embedding") -> float:
    route, body = request_for(capability, model)
    started = time.perf_counter()
    response = http.post(f"{base}/v1/{route}", json=body)
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


@dataclass(frozen=True)
class PooledRun:
    model: str
    repo_id: str
    goal_s: float
    warm: list[float]
    cold: list[float]
    rss: list[tuple[int, int, int]]  # per cold load: the pool replica's RSS before it, loaded, after unloading
    hub_bytes: int  # what the hub served for the model's repo during the cold loads


def pool_rss(pool: str) -> int:
    from candle.testing import replica_processes

    (process,) = replica_processes(pool)
    return process.memory_info().rss


def unloaded_after(http: httpx.Client, base: str, model: str, loads: int) -> int:
    """Wait until ``/v1/models`` says ``model`` is idle after its pool loaded it ``loads`` times in all
    at least (its state alone could still be the one from before a load: the gateway refreshes it every
    second); how many times it was."""
    deadline = time.monotonic() + IDLE_TIMEOUT_S
    while time.monotonic() < deadline:
        card = next(c for c in http.get(f"{base}/v1/models").json()["data"] if c["id"] == model)
        done = sum(r["loads"] for r in card["status"].get("replicas", []))
        if card["status"]["state"] == "idle" and done >= loads:
            return done
        time.sleep(0.1)
    raise TimeoutError(f"{model} not unloaded after {loads} loads within {IDLE_TIMEOUT_S}s")


def pooled_cold_starts(http: httpx.Client, base: str, spec: Any, hub: Any, args: argparse.Namespace) -> PooledRun:
    """Warm requests to pooled ``spec``, then ``args.pool_rounds`` requests, each once it is unloaded."""
    for _ in range(args.warmup):
        timed_request(http, base, spec.name, spec.capability)
    warm = [timed_request(http, base, spec.name, spec.capability) for _ in range(args.warm)]
    hub.reset()
    cold, rss = [], []
    for _ in range(args.pool_rounds):
        loads = unloaded_after(http, base, spec.name, 1)
        before = pool_rss(spec.pool)
        cold.append(timed_request(http, base, spec.name, spec.capability))
        loaded = pool_rss(spec.pool)
        unloaded_after(http, base, spec.name, loads + 1)
        rss.append((before, loaded, pool_rss(spec.pool)))
    return PooledRun(spec.name, spec.repo_id, POOLED[spec.name][2], warm, cold, rss, hub.stats.bytes_for(spec.repo_id))


def report_pooled(report: Report, run: PooledRun) -> None:
    mb = 1e6
    report(
        f"{run.model} ({run.repo_id}): warm p50 {percentile(run.warm, 0.5) * 1000:.1f} ms; idle median "
        f"{statistics.median(run.cold):.2f} s (goal under {run.goal_s:g} s), each "
        + ", ".join(f"{c:.2f} s" for c in run.cold)
        + f"   (hub for them: {run.hub_bytes} bytes)"
    )
    for before, loaded, after in run.rss:
        report(
            f"    pool replica RSS {before / mb:7.0f} MB before the load, {loaded / mb:7.0f} MB loaded, "
            f"{after / mb:7.0f} MB unloaded ({(after - before) / before * 100:+.1f}%)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="cold starts, each after the model went idle")
    parser.add_argument("--warm", type=int, default=20, help="timed requests to the warm replica")
    parser.add_argument("--pool-rounds", type=int, default=5, help="loads of each pooled model, each once unloaded")
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests before the warm ones")
    args = parse_args(parser, smoke={"rounds": 1, "pool_rounds": 1, "warm": 3, "warmup": 1})
    report = Report("bench_cold_start: a request to an idle model (scaled to zero; in a warm pool) vs a warm one")

    from candle.catalog import load_catalog
    from candle.catalog.schema import POOL_FIELDS
    from candle.demo.hub import LocalHub
    from candle.demo.tiny_models import build_tiny_store
    from candle.download import fetch
    from candle.testing import catalog_apps, free_port, wait_for_models

    workdir = Path(tempfile.mkdtemp(prefix="candle-bench-cold-"))
    store = workdir / "store"
    build_tiny_store(store, ["minilm", "qwen3", "sd3"])
    demo = load_catalog("demo")
    pooled = [
        {**demo.get(source).model_dump(exclude=set(POOL_FIELDS)), "name": name, "pool": pool}
        for name, (source, pool, _) in POOLED.items()
    ]
    catalog = {"pools": POOLS, "models": [{**demo.get(MODEL).model_dump(), "autoscaling": SCALING}, *pooled]}
    spec = load_catalog(catalog).get(MODEL)

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
            # The pools start with every model unloaded.
            wait_for_models(base, dict.fromkeys([MODEL, *POOLED], "idle"), IDLE_TIMEOUT_S)
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
            catalog_specs = load_catalog(catalog)
            pooled_runs = [pooled_cold_starts(http, base, catalog_specs.get(name), hub, args) for name in POOLED]
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
    report()
    report(f"warm pools {POOLS}: {args.warmup} untimed requests, {args.warm} timed, {args.pool_rounds} loads once idle")
    for run in pooled_runs:
        report_pooled(report, run)
    report.save(args.results)


if __name__ == "__main__":
    main()
