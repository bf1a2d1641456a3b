"""Run a file of rows through a catalog model, as a resumable Ray job built on Ray Data.

    ray job submit -- python -m candle.jobs.batch --model all-minilm-l6-v2 \\
        --input passages.jsonl --output vectors.jsonl [--via serve|actors] [--concurrency N]

Rows are read with Ray Data (JSONL or Parquet) and computed by a pool of ``--concurrency`` Ray
Data actors (``batch_workers``); this driver writes what comes back (``batch_output``), so a rerun
of the same command computes only the ids that are neither in the output nor in the errors file.
Rows and records are described in ``batch_rows`` and in the README.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.data

from candle.catalog import ModelSpec, load_catalog
from candle.jobs.batch_output import BatchFiles
from candle.jobs.batch_rows import id_key
from candle.jobs.batch_workers import BatchWorker, Via
from candle.placement import replica_resources
from candle.raycluster import connect, error_line

PROGRESS_INTERVAL_S = 5.0
# Rows per actor call. Text rows are small and sentence-transformers sorts a call's texts by
# length before batching them, so larger calls pad less (256 rows: about 1.4x the rows/s of 64 for
# MiniLM on 2 CPUs, bench_batch). Image rows may each be megabytes, and generation rows run
# concurrently within a call: their calls stay small.
BATCH_SIZES = {"text-embedding": 256}
DEFAULT_BATCH_SIZE = 64
SERVE_WORKER_CPUS = 0.1  # a --via serve actor only waits on the deployment


def rows_per_call(capability: str, requested: int | None = None) -> int:
    """``--batch-size`` where given, else the capability's default."""
    return requested or BATCH_SIZES.get(capability, DEFAULT_BATCH_SIZE)


def read_rows(path: str) -> ray.data.Dataset:
    """The input as one column ``row``: each row's JSON text (so one bad row cannot fail the read)."""
    if path.rstrip("/").endswith(".parquet") or Path(path).is_dir():
        return ray.data.read_parquet(path).map_batches(
            lambda batch: {"row": [json.dumps(r, default=str) for r in batch.to_pylist()]}, batch_format="pyarrow"
        )
    # Lines end at "\n" only (JSON Lines): ``read_text`` splits with ``str.splitlines``, which also
    # breaks a row at a raw U+2028, U+0085 or U+001C inside a JSON string, which writers other than
    # Python's ``json`` (orjson, JavaScript) leave unescaped.
    return ray.data.read_binary_files(path).flat_map(
        lambda file: [{"row": line} for line in file["bytes"].decode("utf-8").split("\n") if line.strip()]
    )


def worker_options(spec: ModelSpec, via: Via, concurrency: int) -> dict[str, Any]:
    """Ray Data's ``map_batches`` options: the actor pool, each actor's resources (the entry's, for actors)."""
    pool = ray.data.ActorPoolStrategy(size=concurrency)
    options: dict[str, Any] = {"fn": BatchWorker, "compute": pool, "num_cpus": SERVE_WORKER_CPUS}
    if via == "actors":
        resources = replica_resources(spec)
        options |= {"num_cpus": resources["CPU"], "num_gpus": resources["GPU"]}
    return options


def progress_line(done: int, total: int, failed: int, elapsed: float) -> str:
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = f", ETA {(total - done) / rate:.0f}s" if rate > 0 else ""
    return f"progress: {done}/{total} rows ({failed} failed), {rate:.1f} rows/s{eta}"


@dataclass(frozen=True)
class Summary:
    """What a run did; ``first_batch_s`` (start-up until the first batch is written) lets a benchmark
    tell the steady rate from the start-up (Ray Data's planning, the actors' fetch and model load)."""

    computed: int
    failed: int
    first_batch_rows: int
    first_batch_s: float
    elapsed_s: float


def run(args: argparse.Namespace) -> Summary:
    """Compute the rows not yet done."""
    began = time.monotonic()
    spec = load_catalog(args.catalog).select([args.model]).models[0]
    files = BatchFiles(args.output, args.errors)
    ray.data.DataContext.get_current().enable_progress_bars = False  # the log gets this job's own progress lines
    done = files.done_ids()
    pending = read_rows(args.input).filter(lambda r: id_key(r["row"]) not in done)
    total = pending.count()
    print(f"{spec.name}: {len(done)} rows already done, {total} to compute via {args.via}", flush=True)
    batch_size = rows_per_call(spec.capability, args.batch_size)
    # One block per batch: an actor hands back its output per input block, and a whole input file
    # is one block, so without this the driver would write (and a stopped job keep) nothing until
    # the file's last row.
    results = pending.repartition(target_num_rows_per_block=batch_size).map_batches(
        fn_constructor_kwargs={"spec": spec.model_dump(), "via": args.via},
        batch_size=batch_size,
        batch_format="numpy",
        **worker_options(spec, args.via, args.concurrency),
    )
    computed = failed = first_rows = 0
    first_s = 0.0
    started = last = time.monotonic()
    for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
        records = list(batch["record"])
        failed += files.write(records)
        computed += len(records)
        if not first_rows:
            first_rows, first_s = computed, time.monotonic() - began
        if time.monotonic() - last >= args.progress_interval:
            last = time.monotonic()
            print(progress_line(computed, total, failed, last - started), flush=True)
    print(progress_line(computed, total, failed, time.monotonic() - started), flush=True)
    return Summary(computed, failed, first_rows, first_s, time.monotonic() - began)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m candle.jobs.batch",
        description="Run a JSONL or Parquet file of rows through a catalog model (submit it as a Ray job).",
    )
    parser.add_argument("--model", required=True, help="catalog model name")
    parser.add_argument("--input", required=True, help="JSONL file or Parquet file/folder of rows, each with an id")
    parser.add_argument("--output", required=True, help=".jsonl file or .parquet folder; ids already there are skipped")
    parser.add_argument("--errors", help="JSONL of failed rows (default: beside the output, NAME.errors.jsonl)")
    parser.add_argument("--via", choices=("serve", "actors"), default="serve", help="deployment or own engines")
    parser.add_argument("--concurrency", type=int, default=2, help="Ray Data actors in the pool")
    sizes = f"default: {BATCH_SIZES['text-embedding']} for text embeddings, {DEFAULT_BATCH_SIZE} otherwise"
    parser.add_argument("--batch-size", type=int, help=f"rows per actor call ({sizes})")
    parser.add_argument("--catalog", default="production", help="production, demo or a catalog YAML path")
    parser.add_argument("--progress-interval", type=float, default=PROGRESS_INTERVAL_S, metavar="SECONDS")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        connect()
        summary = run(args)
    except Exception as e:  # one line for the operator; details are in the Ray logs
        print(f"candle batch: error: {error_line(e)}", file=sys.stderr)
        return 1
    print(f"done: computed {summary.computed} rows, {summary.failed} failed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
