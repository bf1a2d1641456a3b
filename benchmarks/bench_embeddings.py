"""``/v1/embeddings`` over HTTP against in-process ``SentenceTransformer.encode``, same texts, same run.

MiniLM (the real all-MiniLM-L6-v2 weights) is served like in the demo: test hub on loopback, the
model's Serve app fetching through the download service, the OpenAI gateway in front. Clients send
``--batch`` texts per request (default: both 1 and 16) at ``--concurrency`` (default 32), asking for
``--encoding-format`` vectors (default: both base64, which the OpenAI SDKs request unless told
otherwise, and float). Printed: texts per second both ways, their ratio (goal: at least 0.8) and the
HTTP latency p50/p99, for the model on one replica with all cores and on one single-threaded replica
per core. With ``--device cuda`` (a GPU node) both sides run on the GPU in bf16, candle's dtype there:
in-process ``encode`` on it, and one replica holding the whole GPU.

The baseline and every HTTP cell are measured alike: one untimed warm-up pass over the first
``--warmup-texts`` (64) texts through the same path (same batch and format), then ``--passes``
timed passes over all texts, and the median of their texts per second (latency percentiles pool
the timed passes' requests).

    python benchmarks/bench_embeddings.py [--texts 2048] [--concurrency 32] [--batch 1 --batch 16]
                                          [--encoding-format base64 --encoding-format float]
                                          [--device cpu|cuda] [--gateway-replicas 2] [--layout all-cores|per-core]
                                          [--passes 3] [--warmup-texts 64] [--smoke] [--results FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from benchlib import Report, parse_args, percentile

from candle.serve_config import GATEWAY_REPLICAS

WORDS = [
    *("cat", "kitten", "mat", "rug", "tax", "report", "spreadsheet", "cluster", "node", "replica", "weights"),
    *("download", "verified", "model", "serve", "quarterly", "river", "mountain", "coffee", "morning", "train"),
    *("station", "library", "window", "garden", "music", "violin", "engine"),
]
MODEL = "all-minilm-l6-v2"
CPU_LAYOUTS = ("all-cores", "per-core")  # one replica with every core; one 1-CPU replica per core


def make_texts(n: int) -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 24))) for _ in range(n)]


def measured(
    one_pass: Callable[[list[str]], list[float]], texts: list[str], warmup: int, passes: int
) -> tuple[float, list[float]]:
    """Median texts per second of ``passes`` timed passes over ``texts`` after one untimed warm-up pass over
    the first ``warmup`` texts, and the latencies ``one_pass`` reported in the timed passes."""
    one_pass(texts[:warmup])
    rates: list[float] = []
    latencies: list[float] = []
    for _ in range(passes):
        started = time.perf_counter()
        latencies += one_pass(texts)
        rates.append(len(texts) / (time.perf_counter() - started))
    return statistics.median(rates), latencies


def in_process(folder: Path, texts: list[str], device: str, warmup: int, passes: int) -> float:
    """Texts per second of plain ``encode`` on this machine, in the dtype a candle replica uses on ``device``."""
    import torch
    from sentence_transformers import SentenceTransformer

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = SentenceTransformer(str(folder), device=device, model_kwargs={"dtype": dtype})

    def encode(part: list[str]) -> list[float]:
        model.encode(part, batch_size=32, normalize_embeddings=True)
        return []

    return measured(encode, texts, warmup, passes)[0]


async def send_all(
    http: httpx.AsyncClient, base: str, texts: list[str], concurrency: int, batch: int, encoding_format: str
) -> list[float]:
    """Send ``texts`` with ``concurrency`` clients, ``batch`` texts a request; the per-request latencies."""
    queue: asyncio.Queue[list[str]] = asyncio.Queue()
    for start in range(0, len(texts), batch):
        queue.put_nowait(texts[start : start + batch])
    latencies: list[float] = []

    async def client() -> None:
        while not queue.empty():
            inputs = queue.get_nowait()
            started = time.perf_counter()
            response = await http.post(
                f"{base}/v1/embeddings", json={"model": MODEL, "input": inputs, "encoding_format": encoding_format}
            )
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies


def over_http(
    base: str, texts: list[str], concurrency: int, batch: int, encoding_format: str, warmup: int, passes: int
) -> tuple[float, list[float]]:
    """Texts per second and per-request latencies of one cell, on one client and event loop for all passes."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with asyncio.Runner() as runner:
        http = httpx.AsyncClient(limits=limits, timeout=60)
        try:
            return measured(
                lambda part: runner.run(send_all(http, base, part, concurrency, batch, encoding_format)),
                texts,
                warmup,
                passes,
            )
        finally:
            runner.run(http.aclose())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=2048)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batch", type=int, action="append", help="texts per request (repeatable; default 1 and 16)")
    parser.add_argument(
        "--encoding-format", action="append", choices=["base64", "float"], help="repeatable; default base64 and float"
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where both sides run")
    parser.add_argument(
        "--gateway-replicas", type=int, default=GATEWAY_REPLICAS, help="default: as serve_config.yaml deploys it"
    )
    parser.add_argument("--warmup-texts", type=int, default=64, help="the untimed pass before each measurement")
    parser.add_argument("--passes", type=int, default=3, help="timed passes per cell and for the baseline (median)")
    parser.add_argument(
        "--layout", action="append", choices=list(CPU_LAYOUTS), help="on CPU (repeatable; default both)"
    )
    args = parse_args(
        parser, smoke={"texts": 32, "warmup_texts": 8, "concurrency": 4, "passes": 1, "layout": ["all-cores"]}
    )
    report = Report("bench_embeddings: /v1/embeddings over HTTP vs in-process encode")
    batches = args.batch or [1, 16]
    formats = args.encoding_format or ["base64", "float"]

    from candle.catalog import Resources, load_catalog
    from candle.demo.hub import LocalHub
    from candle.demo.tiny_models import TINY_MODELS, build_tiny_store
    from candle.testing import free_port, wait_for_models

    workdir = Path(tempfile.mkdtemp(prefix="candle-bench-emb-"))
    store = workdir / "store"
    build_tiny_store(store, ["minilm"])
    texts = make_texts(args.texts)
    baseline = in_process(store / TINY_MODELS["minilm"], texts, args.device, args.warmup_texts, args.passes)
    cores = os.cpu_count() or 1
    # The model gets the machine's cores, as the in-process baseline does (Ray sizes each replica's
    # torch threads by its num_cpus): one replica using all of them, then one single-threaded
    # replica per core. On a GPU, one replica with the whole GPU.
    if args.device == "cuda":
        layouts = {"1 x 1 GPU": (1, Resources(num_cpus=1, num_gpus=1))}
    else:
        cpu_layouts = {
            "all-cores": (f"1 x {cores} CPU", (1, Resources(num_cpus=cores))),
            "per-core": (f"{cores} x 1 CPU", (cores, Resources())),
        }
        layouts = dict(cpu_layouts[key] for key in args.layout or CPU_LAYOUTS)

    with LocalHub(store) as hub:
        os.environ.update(HF_ENDPOINT=hub.endpoint, HF_HUB_CACHE=str(workdir / "hf-cache"), HF_HUB_DISABLE_XET="1")
        import ray
        from ray import serve
        from ray.serve.api import RunTarget

        from candle.testing.cluster import start_local_ray
        from deployments.app import build_gateway_app, build_model_app

        start_local_ray(num_cpus=cores + 1, include_dashboard=False, log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        base = f"http://127.0.0.1:{port}"
        results = {}
        spec = load_catalog("demo").get(MODEL)
        for name, (replicas, resources) in layouts.items():
            # Enough concurrency per replica for batches to form.
            layout = {"resources": resources, "num_replicas": replicas, "max_ongoing_requests": 64}
            catalog = {"models": [spec.model_copy(update=layout).model_dump()]}
            serve.run_many(
                [
                    RunTarget(build_model_app({"catalog": catalog, "model": MODEL}), name=MODEL, route_prefix=None),
                    RunTarget(
                        build_gateway_app({"catalog": catalog, "num_replicas": args.gateway_replicas}), name="gateway"
                    ),
                ]
            )
            wait_for_models(base, {MODEL: "ready"})
            for batch in batches:
                for encoding_format in formats:
                    results[(name, batch, encoding_format)] = over_http(
                        base, texts, args.concurrency, batch, encoding_format, args.warmup_texts, args.passes
                    )
            serve.delete(MODEL)
            serve.delete("gateway")
        serve.shutdown()
        ray.shutdown()

    report(
        f"texts: {len(texts)}; HTTP concurrency {args.concurrency}; gateway replicas {args.gateway_replicas}; "
        f"in-process encode on {args.device} {baseline:.1f} texts/s"
    )
    report(f"each side: a warm-up pass over {args.warmup_texts} texts, then the median of {args.passes} timed passes")
    row = "{:>12}{:>14}{:>9}{:>14}{:>8}{:>9}{:>9}"
    report(row.format("replicas", "texts/request", "encoding", "HTTP texts/s", "ratio", "p50 ms", "p99 ms"))
    for (layout, batch, encoding_format), (throughput, latencies) in results.items():
        p50, p99 = percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000
        ratio = throughput / baseline
        report(
            row.format(layout, batch, encoding_format, f"{throughput:.1f}", f"{ratio:.2f}", f"{p50:.1f}", f"{p99:.1f}")
        )
    report("goal: ratio >= 0.80")
    report.save(args.results)


if __name__ == "__main__":
    main()
