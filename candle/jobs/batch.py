"""Embed a file of rows with a catalog model, as a resumable Ray job built on Ray Data.

    ray job submit --working-dir . -- python -m candle.jobs.batch --model all-minilm-l6-v2 \\
        --input passages.jsonl --output vectors.jsonl

Rows are read with Ray Data (JSONL or Parquet), computed by workers, and written by this driver:
one JSON object per line appended to a ``.jsonl`` output, or one part file per written chunk in a
``.parquet`` output folder (each part written under a temporary name, then renamed). The driver
writes, not Ray Data's sinks, so what is in the output is exactly what was finished: a rerun reads
the ids already in the output and in the errors file and computes only the others. A line torn by
a killed job is dropped on resume. Failed rows (no input, engine error) go to the errors file with
their id and reason; delete it to retry them.

``--via serve`` sends each row through the running model's Serve deployment, from a pool of
``--concurrency`` Ray Data actors with one batch each in flight; ``--via actors`` loads the
catalog entry's own engine in each actor of the pool, weights fetched through the node's downloader.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.data

from candle.catalog import ModelSpec, load_catalog
from candle.catalog.capabilities import REGISTRY
from candle.jobs.batch_rows import EMBEDDING_CAPABILITIES, embedding_item, error_record, success_record
from candle.placement import replica_resources
from candle.raycluster import connect, error_line

PROGRESS_INTERVAL_S = 5.0
DEFAULT_BATCH_SIZE = 64


class ServeWorker:
    """A Ray Data actor sending its batch's rows, one call each, to the model's running deployment."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from ray import serve

        self.spec = ModelSpec.model_validate(spec)
        self.handle = serve.get_deployment_handle(REGISTRY[self.spec.capability].deployment, app_name=self.spec.name)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        rows = [json.loads(row) for row in batch["row"]]
        pending = []
        for row in rows:
            try:
                pending.append(self.handle.embed.remote([embedding_item(self.spec.capability, row)]))
            except ValueError as e:
                pending.append(e)
        records = []
        for row, call in zip(rows, pending, strict=True):
            try:
                if isinstance(call, Exception):
                    raise call
                vectors, _ = call.result()
                records.append(success_record(row, vectors[0]))
            except Exception as e:
                records.append(error_record(row, e))
        return {"record": records}


class EngineWorker:
    """A Ray Data actor running the entry's own engine: the embedding replica's code, without Serve."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from deployments.embeddings import EmbeddingReplica

        replica = EmbeddingReplica.__new__(EmbeddingReplica)  # its __init__ is async: fetch, then load
        asyncio.run(replica.__init__(spec))
        self.replica = replica

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        from deployments.embeddings import EmbedCall

        rows = [json.loads(row) for row in batch["row"]]
        records: list[str | None] = [None] * len(rows)
        calls, index = [], []
        for i, row in enumerate(rows):
            try:
                calls.append(EmbedCall((embedding_item(self.replica.spec.capability, row),)))
                index.append(i)
            except ValueError as e:
                records[i] = error_record(row, e)
        for i, result in zip(index, self.replica.embed_calls(calls), strict=True):
            records[i] = (
                error_record(rows[i], result)
                if isinstance(result, Exception)
                else success_record(rows[i], result[0][0])
            )
        return {"record": [r for r in records if r is not None]}


def read_rows(path: str) -> ray.data.Dataset:
    """The input as one column ``row``: each row's JSON text (so one bad row cannot fail the read)."""
    if path.endswith(".parquet") or Path(path).is_dir():
        table = ray.data.read_parquet(path)
        return table.map_batches(
            lambda batch: {"row": [json.dumps(r, default=str) for r in batch.to_pylist()]}, batch_format="pyarrow"
        )
    return ray.data.read_text(path).map_batches(
        lambda batch: {"row": [line for line in batch["text"] if line.strip()]}, batch_format="numpy"
    )


def id_key(row_json: str) -> str:
    """The identity of a row across runs: its ``id`` as JSON text (a line that is no JSON: itself)."""
    try:
        return json.dumps(json.loads(row_json).get("id"))
    except (ValueError, AttributeError):
        return row_json


class Output:
    """Where finished rows go, and which ids are already there (see the module docstring)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.parquet = path.endswith(".parquet")

    def done_ids(self) -> set[str]:
        if self.parquet:
            parts = sorted(self.path.glob("part-*.parquet")) if self.path.is_dir() else []
            return {
                json.dumps(i) for part in parts for i in pq.read_table(part, columns=["id"]).column("id").to_pylist()
            }
        return {json.dumps(json.loads(line)["id"]) for line in read_complete_lines(self.path)}

    def write(self, records: list[str]) -> None:
        if not records:
            return
        if self.parquet:
            self.path.mkdir(parents=True, exist_ok=True)
            part = self.path / f"part-{time.time_ns()}.parquet"
            pending = part.with_suffix(".tmp")
            pq.write_table(pa.Table.from_pylist([json.loads(r) for r in records]), pending)
            pending.rename(part)
            return
        append_lines(self.path, records)


def read_complete_lines(path: Path) -> list[str]:
    """The complete lines of a JSONL file; a torn last line (a killed writer's) is cut off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
    return [line for line in data[:end].decode().splitlines() if line.strip()]


def append_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write("".join(line + "\n" for line in lines))
        f.flush()


def default_errors_path(output: str) -> str:
    base = output.rstrip("/")
    for suffix in (".jsonl", ".parquet"):
        base = base.removesuffix(suffix)
    return f"{base}.errors.jsonl"


def worker_options(spec: ModelSpec, via: str, concurrency: int) -> dict[str, Any]:
    """Ray Data's ``map_batches`` options: the pool, and each actor's resources."""
    if via == "serve":  # the deployment computes; the actor only waits on it
        return {"fn": ServeWorker, "concurrency": concurrency, "num_cpus": 0.1}
    resources = replica_resources(spec)
    return {"fn": EngineWorker, "concurrency": concurrency, "num_cpus": resources["CPU"], "num_gpus": resources["GPU"]}


def progress_line(done: int, total: int, failed: int, elapsed: float) -> str:
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = f", ETA {(total - done) / rate:.0f}s" if rate > 0 else ""
    return f"progress: {done}/{total} rows ({failed} failed), {rate:.1f} rows/s{eta}"


def run(args: argparse.Namespace) -> tuple[int, int]:
    """Compute the rows not yet done; return (rows computed, rows failed)."""
    spec = load_catalog(args.catalog).select([args.model]).models[0]
    if spec.capability not in EMBEDDING_CAPABILITIES:
        raise ValueError(f"{spec.name}: batch jobs do not run {spec.capability} models yet")
    output, errors = Output(args.output), Path(args.errors or default_errors_path(args.output))
    done = output.done_ids() | {json.dumps(json.loads(line)["id"]) for line in read_complete_lines(errors)}
    pending = read_rows(args.input).filter(lambda r: id_key(r["row"]) not in done)
    total = pending.count()
    print(f"{spec.name}: {len(done)} rows already done, {total} to compute via {args.via}", flush=True)
    results = pending.map_batches(
        fn_constructor_kwargs={"spec": spec.model_dump()},
        batch_size=args.batch_size,
        batch_format="numpy",
        **worker_options(spec, args.via, args.concurrency),
    )
    computed = failed = 0
    started = last = time.monotonic()
    for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
        records = list(batch["record"])
        bad = [r for r in records if "error" in json.loads(r)]
        output.write([r for r in records if "error" not in json.loads(r)])
        if bad:
            append_lines(errors, bad)
        computed, failed = computed + len(records), failed + len(bad)
        if time.monotonic() - last >= args.progress_interval:
            last = time.monotonic()
            print(progress_line(computed, total, failed, last - started), flush=True)
    print(progress_line(computed, total, failed, time.monotonic() - started), flush=True)
    return computed, failed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m candle.jobs.batch", description="Embed a JSONL or Parquet file of rows (run it as a Ray job)."
    )
    parser.add_argument("--model", required=True, help="catalog model name")
    parser.add_argument("--input", required=True, help="JSONL or Parquet rows: id, input")
    parser.add_argument(
        "--output", required=True, help=".jsonl file or .parquet folder; rows already there are skipped"
    )
    parser.add_argument("--errors", help="JSONL of failed rows (default: beside the output, NAME.errors.jsonl)")
    parser.add_argument("--via", choices=("serve", "actors"), default="serve")
    parser.add_argument("--concurrency", type=int, default=2, help="Ray Data actors in the pool")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="rows per actor call")
    parser.add_argument("--catalog", default="production", help="production, demo or a catalog YAML path")
    parser.add_argument("--progress-interval", type=float, default=PROGRESS_INTERVAL_S, metavar="SECONDS")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        connect()
        computed, failed = run(args)
    except Exception as e:  # one line for the operator; details are in the Ray logs
        print(f"candle batch: error: {error_line(e)}", file=sys.stderr)
        return 1
    print(f"done: computed {computed} rows, {failed} failed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
