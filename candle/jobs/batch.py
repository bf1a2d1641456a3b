"""Run a file of rows through a catalog model, as a resumable Ray job built on Ray Data.

    ray job submit -- python -m candle.jobs.batch --model all-minilm-l6-v2 \\
        --input passages.jsonl --output vectors.jsonl [--via serve|actors] [--concurrency N]

Rows are read with Ray Data (JSONL or Parquet) and computed by a pool of ``--concurrency`` Ray
Data actors (``batch_workers``); this driver writes what comes back (``batch_output``), so a rerun
of the same command computes only the ids that are neither in the output nor in the errors file.
Rows and records are described in ``batch_rows`` and in docs/batch.md.
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
from candle.jobs.batch_progress import Progress, Reporter
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
# What each of the job's own Ray Data tasks (reading, skipping done rows, cutting batches) and each
# --via serve actor (which only waits on the deployment) asks for: a busy cluster has a fraction of
# a CPU free (the demo books 1.85 of 2), and Ray Data's default whole CPU per task never came.
LIGHT_CPUS = 0.05


def rows_per_call(capability: str, requested: int | None = None) -> int:
    """``--batch-size`` where given, else the capability's default."""
    return requested or BATCH_SIZES.get(capability, DEFAULT_BATCH_SIZE)


def read_rows(path: str) -> ray.data.Dataset:
    """The input as one column ``row``: each row's JSON bytes (so one bad row, even one that is not
    UTF-8, cannot fail the read: it fails alone, as its row)."""
    if path.rstrip("/").endswith(".parquet") or Path(path).is_dir():
        return ray.data.read_parquet(path, num_cpus=LIGHT_CPUS).map_batches(
            lambda batch: {"row": [json.dumps(r, default=str).encode() for r in batch.to_pylist()]},
            batch_format="pyarrow",
            num_cpus=LIGHT_CPUS,
        )
    # Lines end at "\n" only (JSON Lines): ``read_text`` splits with ``str.splitlines``, which also
    # breaks a row at a raw U+2028, U+0085 or U+001C inside a JSON string, which writers other than
    # Python's ``json`` (orjson, JavaScript) leave unescaped.
    return ray.data.read_binary_files(path, num_cpus=LIGHT_CPUS).flat_map(
        lambda file: [{"row": line} for line in file["bytes"].split(b"\n") if line.strip()], num_cpus=LIGHT_CPUS
    )


def pending_rows(path: str, done: set[str]) -> ray.data.Dataset:
    """The input's rows whose ids are not ``done``."""
    return read_rows(path).filter(lambda r: id_key(r["row"]) not in done, num_cpus=LIGHT_CPUS)


def count_rows(rows: ray.data.Dataset) -> int:
    """How many rows ``rows`` holds, counted in tasks as light as its own: ``Dataset.count`` adds an
    operator that asks for a whole CPU."""
    counts = rows.map_batches(lambda batch: {"rows": [len(batch["row"])]}, batch_size=None, num_cpus=LIGHT_CPUS)
    return sum(int(batch["rows"].sum()) for batch in counts.iter_batches(batch_size=None, batch_format="numpy"))


def one_block_per_batch(rows: ray.data.Dataset, batch_size: int) -> ray.data.Dataset:
    """``rows`` cut into blocks of ``batch_size`` rows by Ray Data's streaming repartition.

    An actor hands back its output per input block, and a whole input file is one block: uncut,
    the driver would write (and a stopped job keep) nothing until the file's last row.
    ``Dataset.repartition`` takes no task options, and its tasks ask for a whole CPU: its logical
    operator's remote arguments are set here, the one private part of Ray Data this job touches,
    checked so that a Ray Data that moved them fails at once instead of waiting on a busy cluster.
    """
    cut = rows.repartition(target_num_rows_per_block=batch_size)
    operator = cut._logical_plan.dag
    remote_args = getattr(operator, "ray_remote_args", None)
    if type(operator).__name__ != "StreamingRepartition" or not isinstance(remote_args, dict):
        planned = type(operator).__name__
        raise RuntimeError(f"Ray Data {ray.__version__} plans repartition as {planned}: cannot set its CPUs")
    remote_args["num_cpus"] = LIGHT_CPUS
    return cut


def worker_options(spec: ModelSpec, via: Via, concurrency: int) -> dict[str, Any]:
    """Ray Data's ``map_batches`` options: the actor pool, each actor's resources (the entry's, for actors)."""
    pool = ray.data.ActorPoolStrategy(size=concurrency)
    options: dict[str, Any] = {"fn": BatchWorker, "compute": pool, "num_cpus": LIGHT_CPUS}
    if via == "actors":
        resources = replica_resources(spec)
        options |= {"num_cpus": resources["CPU"], "num_gpus": resources["GPU"]}
    return options


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
    """Compute the rows not yet done, printing progress (or what the job waits for) as it goes."""
    began = time.monotonic()
    spec = load_catalog(args.catalog).select([args.model]).models[0]
    files = BatchFiles(args.output, args.errors)
    ray.data.DataContext.get_current().enable_progress_bars = False  # the log gets this job's own progress lines
    batch_size = rows_per_call(spec.capability, args.batch_size)
    progress = Progress()
    first_rows, first_s = 0, 0.0
    with Reporter(progress, args.progress_interval):
        done = files.done_ids()
        pending = pending_rows(args.input, done)
        progress.begin(count_rows(pending))
        print(f"{spec.name}: {len(done)} rows already done, {progress.total} to compute via {args.via}", flush=True)
        results = one_block_per_batch(pending, batch_size).map_batches(
            fn_constructor_kwargs={"spec": spec.model_dump(), "via": args.via},
            batch_size=batch_size,
            batch_format="numpy",
            **worker_options(spec, args.via, args.concurrency),
        )
        for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
            records = list(batch["record"])
            progress.add(len(records), files.write(records))
            if not first_rows:
                first_rows, first_s = progress.done, time.monotonic() - began
    print(progress.line(), flush=True)
    return Summary(progress.done, progress.failed, first_rows, first_s, time.monotonic() - began)


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
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=PROGRESS_INTERVAL_S,
        metavar="SECONDS",
        help="how often to print progress, or what the job waits for",
    )
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
