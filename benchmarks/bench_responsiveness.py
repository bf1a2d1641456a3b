"""How fast candle's control paths answer while heavy work runs next to them, against the same path idle.

Three ratios, each measured in one run, busy and idle alike (same warm-up, same number of samples,
same pacing, same statistics):

1. The node's download actor: ``ping`` round trips, one every 5 ms, while it transfers one large
   file from the bandwidth-capped test hub, against as many pings once it is idle (p50 and p99; goal:
   busy p99 under 50 ms, the actor's loop never blocked by a transfer).
2. The gateway's ``/health``: while the model behind it downloads its weights (throttled hub) and
   while it serves a stream of embedding requests, against idle (p50 and p99; goal: under 0.5 s).
3. A text generation stream (``TransformersTextEngine``, tiny model): how long ``close()`` takes to
   stop it, against the time of one generated token (whole generation / tokens), over the same
   number of trials, and how many decoding steps still ran after the close (goal: about one token).

    python benchmarks/bench_responsiveness.py [--transfer-mb 200] [--bandwidth-mb 80] [--requests 200]
                                              [--trials 20] [--max-tokens 64] [--smoke] [--results FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from benchlib import Report, parse_args, percentile

from candle.demo.hub import LocalHub, write_random_file

MB = 1024 * 1024
PING_EVERY_S = 0.005
HEALTH_EVERY_S = 0.01
MODEL = "all-minilm-l6-v2"
TRANSFER_REPO = "bench/large-transfer"


def summary(busy: list[float], idle: list[float]) -> str:
    """p50 and p99 in ms busy and idle, and their busy / idle ratios."""
    cells = []
    for q in (0.5, 0.99):
        b, i = percentile(busy, q), percentile(idle, q)
        cells.append(f"p{round(q * 100)} {b * 1000:7.1f} vs {i * 1000:5.1f} ms ({b / i:5.1f}x)")
    return f"{'; '.join(cells)}; {len(busy)} samples each"


# -- 1. the download actor ----------------------------------------------------------------------


async def ping_round_trips(downloader: Any, more: Callable[[int], bool]) -> list[float]:
    """Ping the actor every ``PING_EVERY_S`` while ``more(pings so far)``; the round-trip times."""
    latencies: list[float] = []
    while more(len(latencies)):
        started = time.perf_counter()
        await downloader.ping.remote()
        latencies.append(time.perf_counter() - started)
        await asyncio.sleep(PING_EVERY_S)
    return latencies


async def actor_pings(hub: LocalHub, cache_dir: Path, warmup: int) -> tuple[list[float], list[float]]:
    """Pings while the actor transfers ``TRANSFER_REPO`` (from its first byte to the end), then as many idle."""
    from candle.download import fetch, node_downloader

    downloader = node_downloader()
    await ping_round_trips(downloader, lambda n: n < warmup)
    transfer = asyncio.ensure_future(fetch(TRANSFER_REPO, cache_dir=cache_dir, endpoint=hub.endpoint))
    while hub.stats.bytes_for(TRANSFER_REPO) == 0 and not transfer.done():
        await asyncio.sleep(0.001)
    busy = await ping_round_trips(downloader, lambda _: not transfer.done())
    await transfer
    idle = await ping_round_trips(downloader, lambda n: n < len(busy))
    return busy, idle


# -- 2. the gateway's /health -------------------------------------------------------------------


def health_latencies(http: httpx.Client, base: str, count: int) -> list[float]:
    """``count`` round trips of ``GET /health``, one every ``HEALTH_EVERY_S``."""
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        http.get(f"{base}/health").raise_for_status()
        latencies.append(time.perf_counter() - started)
        time.sleep(HEALTH_EVERY_S)
    return latencies


@contextmanager
def embedding_load(base: str, clients: int) -> Iterator[list[None]]:
    """``clients`` threads posting 16-text embedding requests back to back until the block ends, from their
    first answer on; yields a list that grows by one per answer, so the caller can show the model was busy."""
    stop = threading.Event()
    answers: list[None] = []
    texts = [f"a sentence about load number {i}" for i in range(16)]

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            while not stop.is_set():
                http.post(f"{base}/v1/embeddings", json={"model": MODEL, "input": texts}).raise_for_status()
                answers.append(None)

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client) for _ in range(clients)]
        while not answers and not any(f.done() for f in futures):  # a client that failed ends the wait
            time.sleep(0.01)
        try:
            yield answers
        finally:
            stop.set()
            for future in futures:
                future.result()


def gateway_health(hub: LocalHub, requests: int, report: Report) -> None:
    """MiniLM behind the gateway, as the demo serves it: /health while it downloads, idle, and serving."""
    from ray import serve

    from candle.catalog import load_catalog
    from candle.demo.tiny_models import TINY_MODELS, build_tiny_store
    from candle.testing import catalog_apps, free_port, wait_for_models

    build_tiny_store(hub.state.root, ["minilm"])
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    catalog = {"models": [load_catalog("demo").get(MODEL).model_dump()]}
    hub.state.throttles[TINY_MODELS["minilm"]] = 1 * MB  # ~90 s for MiniLM's weights: downloading throughout
    with catalog_apps(catalog, "gateway", "/"), httpx.Client(timeout=60) as http:
        wait_for_models(base, {MODEL: "downloading"})
        health_latencies(http, base, requests // 10)  # warm-up: connection, gateway routes
        downloading = health_latencies(http, base, requests)
        state = http.get(f"{base}/v1/models/{MODEL}").json()["status"]["state"]
        hub.state.throttles.clear()
        wait_for_models(base, {MODEL: "ready"})
        idle = health_latencies(http, base, requests)
        with embedding_load(base, clients=8) as answers:
            before = len(answers)
            serving = health_latencies(http, base, requests)
            served = len(answers) - before
    serve.shutdown()
    report(f"/health while the model downloads vs idle: {summary(downloading, idle)} (model then: {state})")
    report(f"/health while the model serves vs idle:    {summary(serving, idle)} ({served} requests served meanwhile)")


# -- 3. closing a generation stream -------------------------------------------------------------


def stream_close(workdir: Path, trials: int, max_tokens: int, report: Report) -> None:
    """Uncut generations, then streams closed after their first chunk, on one in-process engine."""
    from candle.catalog import ModelSpec
    from candle.contracts import ChatCall, GenerationParams
    from candle.demo.tiny_models import TINY_MODELS, build_tiny_store
    from candle.engines.chat.transformers import TransformersTextEngine

    folder = build_tiny_store(workdir / "engine-store", ["qwen3"])["qwen3"]
    engine = TransformersTextEngine(
        folder, ModelSpec(name="qwen3", capability="text-to-text", repo_id=TINY_MODELS["qwen3"])
    )
    chat = [{"role": "user", "content": "Hello! How can I help you today?"}]
    params = GenerationParams(max_tokens=max_tokens, temperature=0)
    forwards = [0]
    hook = engine.model.register_forward_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    list(engine.chat(ChatCall(chat, GenerationParams(max_tokens=8, temperature=0))))  # warm-up for both

    token_s, tokens = [], []
    for _ in range(trials):
        started = time.perf_counter()
        last = list(engine.chat(ChatCall(chat, params)))[-1]
        token_s.append((time.perf_counter() - started) / max(1, last.completion_tokens))
        tokens.append(last.completion_tokens)
    close_s, after_close = [], []
    for _ in range(trials):
        stream = engine.chat(ChatCall(chat, params))
        next(stream)
        started, ran = time.perf_counter(), forwards[0]
        stream.close()  # what the server does when a client goes away mid-stream
        close_s.append(time.perf_counter() - started)
        after_close.append(forwards[0] - ran)
    hook.remove()
    close_p50, token_p50 = statistics.median(close_s), statistics.median(token_s)
    report(
        f"stream close vs one token: p50 {close_p50 * 1000:.1f} vs {token_p50 * 1000:.1f} ms "
        f"({close_p50 / token_p50:.1f}x), worst close {max(close_s) * 1000:.1f} ms; "
        f"decoding steps after close: median {statistics.median(after_close):.0f}, most {max(after_close)} "
        f"(uncut runs: {min(tokens)}-{max(tokens)} tokens); {trials} trials each"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transfer-mb", type=int, default=200, help="size of the file the actor transfers")
    parser.add_argument("--bandwidth-mb", type=int, default=80, help="the hub's rate for it, MB/s")
    parser.add_argument("--requests", type=int, default=200, help="/health requests per phase")
    parser.add_argument("--trials", type=int, default=20, help="generations per stream measurement")
    parser.add_argument("--max-tokens", type=int, default=64, help="length of an uncut generation")
    smoke = {"transfer_mb": 16, "bandwidth_mb": 16, "requests": 20, "trials": 2, "max_tokens": 16}
    args = parse_args(parser, smoke=smoke)
    report = Report("bench_responsiveness: control paths busy vs idle")

    workdir = Path(tempfile.mkdtemp(prefix="candle-bench-resp-"))
    write_random_file(workdir / "store" / TRANSFER_REPO / "model.safetensors", args.transfer_mb * MB)
    try:
        with LocalHub(workdir / "store") as hub:
            # For the Ray workers (download actor, replicas), which read the environment of their node.
            os.environ.update(HF_ENDPOINT=hub.endpoint, HF_HUB_CACHE=str(workdir / "hf-cache"), HF_HUB_DISABLE_XET="1")
            import ray

            from candle.testing.cluster import start_local_ray

            start_local_ray(include_dashboard=False, log_to_driver=False)
            try:
                hub.state.throttles[TRANSFER_REPO] = args.bandwidth_mb * MB
                busy, idle = asyncio.run(actor_pings(hub, workdir / "transfer-cache", warmup=args.requests // 10))
                report(f"download actor ping during a {args.transfer_mb} MB transfer vs idle: {summary(busy, idle)}")
                gateway_health(hub, args.requests, report)
            finally:
                ray.shutdown()
        stream_close(workdir, args.trials, args.max_tokens, report)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report("goals: actor ping p99 < 50 ms; /health < 0.5 s; stream close about one token")
    report.save(args.results)


if __name__ == "__main__":
    main()
