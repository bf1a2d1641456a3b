"""The batch job's rows/s for MiniLM embeddings, both ways (``serve``, ``actors``), against in-process encode.

The same ``--rows`` texts (bench_embeddings' generator) are embedded by in-process
``SentenceTransformer.encode`` (the median of ``--passes`` passes after a warm-up, as
bench_embeddings measures it) and by the batch job's driver (``candle.jobs.batch``, run in this
process on a local Ray with every core): ``--via serve`` through a running MiniLM deployment that
takes every core, ``--via actors`` with one actor taking every core (Ray gets two CPUs more than
the machine has, for Ray Data's read tasks beside the model). Each way runs ``--passes`` times
into fresh outputs, medians reported twice: the steady rate, after the run's first batch is
written (the same warm-up as in-process: model loaded, one batch done), which the goal is about,
and the whole run, start-up included (Ray Data's planning; for ``actors`` also the fetch and model
load), which is what an operator waits for. Goal: ``actors`` steady rate at least 0.8x in-process
on one node.

    python benchmarks/bench_batch.py [--rows 4096] [--passes 2] [--batch-size N] [--smoke] [--results FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from bench_embeddings import in_process, make_texts
from benchlib import Report, parse_args

MODEL = "all-minilm-l6-v2"


def job_rates(
    workdir: Path, rows: int, via: str, catalog: dict, batch_size: int | None, passes: int
) -> tuple[float, float]:
    """Median rows/s of ``passes`` runs of the batch job over the input in ``workdir``: steady, and whole runs."""
    from candle.jobs.batch import build_parser, run

    steady, whole = [], []
    for attempt in range(passes):
        output = workdir / f"{via}-{attempt}.jsonl"
        catalog_path = workdir / "catalog.yaml"
        catalog_path.write_text(json.dumps(catalog))  # JSON is YAML
        argv = ["--model", MODEL, "--catalog", str(catalog_path), "--input", str(workdir / "rows.jsonl")]
        argv += ["--output", str(output), "--via", via, "--concurrency", "1"]
        argv += ["--batch-size", str(batch_size)] if batch_size else []
        summary = run(build_parser().parse_args(argv))
        if summary.failed or sum(1 for _ in output.open()) != rows:
            raise RuntimeError(f"the batch job via {via} wrote the wrong rows: {summary}")
        steady.append((rows - summary.first_batch_rows) / (summary.elapsed_s - summary.first_batch_s))
        whole.append(rows / summary.elapsed_s)
    return statistics.median(steady), statistics.median(whole)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--batch-size", type=int, help="rows per Ray Data batch (default: the job's)")
    args = parse_args(parser, smoke={"rows": 64, "passes": 1, "batch_size": 16})
    report = Report("bench_batch: the batch job's rows/s vs in-process encode (MiniLM)")

    from candle.catalog import Resources, load_catalog
    from candle.demo.hub import LocalHub
    from candle.demo.tiny_models import TINY_MODELS, build_tiny_store
    from candle.jobs.batch import rows_per_call

    workdir = Path(tempfile.mkdtemp(prefix="candle-bench-batch-"))
    store = workdir / "store"
    build_tiny_store(store, ["minilm"])
    texts = make_texts(args.rows)
    (workdir / "rows.jsonl").write_text("".join(json.dumps({"id": i, "input": t}) + "\n" for i, t in enumerate(texts)))
    baseline = in_process(store / TINY_MODELS["minilm"], texts, "cpu", min(64, args.rows), args.passes)
    cores = os.cpu_count() or 1
    spec = load_catalog("demo").get(MODEL).model_copy(update={"resources": Resources(num_cpus=cores)})
    catalog = {"models": [spec.model_dump(mode="json")]}

    with LocalHub(store) as hub:
        os.environ.update(HF_ENDPOINT=hub.endpoint, HF_HUB_CACHE=str(workdir / "hf-cache"), HF_HUB_DISABLE_XET="1")
        import ray
        from ray import serve

        from candle.testing.cluster import start_local_ray
        from deployments.app import build_model_app

        start_local_ray(num_cpus=cores + 2, include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": 0})
        serve.run(build_model_app({"catalog": catalog, "model": MODEL}), name=MODEL, route_prefix=None)
        served = job_rates(workdir, args.rows, "serve", catalog, args.batch_size, args.passes)
        serve.delete(MODEL)  # frees the cores for the actor pool
        actors = job_rates(workdir, args.rows, "actors", catalog, args.batch_size, args.passes)
        serve.shutdown()
        ray.shutdown()

    batch_size = rows_per_call(spec.capability, args.batch_size)
    report(f"rows: {args.rows}; batch size {batch_size}; {cores} CPUs; in-process encode {baseline:.1f} rows/s")
    report(f"job runs: the median of {args.passes} runs; steady = after the first batch, whole = start-up included")
    row = "{:>8}{:>16}{:>8}{:>16}{:>8}"
    report(row.format("via", "steady rows/s", "ratio", "whole rows/s", "ratio"))
    for via, (steady, whole) in (("serve", served), ("actors", actors)):
        report(row.format(via, f"{steady:.1f}", f"{steady / baseline:.2f}", f"{whole:.1f}", f"{whole / baseline:.2f}"))
    report("goal: actors steady ratio >= 0.80")
    report.save(args.results)


if __name__ == "__main__":
    main()
