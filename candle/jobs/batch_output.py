"""The batch job's files: the output (JSONL or Parquet), the errors file, the PNGs, and what is done.

Only the job's driver writes them, after a batch is finished, so what is in the output is exactly
what was computed: a JSONL output is appended to (a line torn by a killed job is cut off on
resume), a Parquet output is a folder of part files, each written under a temporary name and then
renamed. A PNG is in place before the row that names it. The ids in the output and in the errors
file are the rows a rerun skips.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from candle.jobs.batch_rows import PNG_KEY, RowError, RowId, error_record

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_ID_FIELD = re.compile(r'\{\s*"id"\s*:\s*')  # how every record this job writes begins
_DECODER = json.JSONDecoder()


class BatchFiles:
    """The output, its errors file and its images folder, for one ``--output`` path."""

    def __init__(self, output: str, errors: str | None = None) -> None:
        self.output = Path(output).resolve()
        self.parquet = output.rstrip("/").endswith(".parquet")
        base = self.output.parent / self.output.name.removesuffix(".parquet").removesuffix(".jsonl")
        self.errors = Path(errors).resolve() if errors else base.with_name(base.name + ".errors.jsonl")
        self.images = base.with_name(base.name + ".images")
        self._id_type: type | None = None  # a Parquet output's id type, once known

    def done_ids(self) -> set[str]:
        """The ids (as JSON text) already in the output or the errors file: only the ids are read, a
        line at a time (an output's vectors may be hundreds of MiB)."""
        done = {json.dumps(record_id(line)) for line in complete_lines(self.errors)}
        if not self.parquet:
            return done | {json.dumps(record_id(line)) for line in complete_lines(self.output)}
        return done | {
            json.dumps(i)
            for part in self._parts()
            for i in pq.read_table(part, columns=["id"]).column("id").to_pylist()
        }

    def write(self, records: list[str]) -> int:
        """Write one finished batch's records where they belong; return how many failed."""
        rows = [orjson.loads(record) for record in records]
        failed = [record for record, row in zip(records, rows, strict=True) if "error" in row]
        done = [row for row in rows if "error" not in row]
        if done and self.parquet:
            done, refused = self._split_by_id_type(done)
            failed += refused
        done = [self._with_image_path(row) for row in done]
        if failed:
            append_lines(self.errors, failed)
        if done and self.parquet:
            self.output.mkdir(parents=True, exist_ok=True)
            part = self.output / f"part-{time.time_ns()}.parquet"
            pq.write_table(pa.Table.from_pylist(done), part.with_suffix(".tmp"))
            part.with_suffix(".tmp").rename(part)
        elif done:
            append_lines(self.output, [orjson.dumps(row).decode() for row in done])
        return len(failed)

    def _split_by_id_type(self, rows: list[dict]) -> tuple[list[dict], list[str]]:
        """The rows whose id has the type of the Parquet output's id column (its first part's, or
        the first row's), and an error record for each other row: one column holds one type."""
        if self._id_type is None:
            parts = self._parts()
            column = pq.read_schema(parts[0]).field("id").type if parts else None
            self._id_type = type(rows[0]["id"]) if column is None else str if pa.types.is_string(column) else int
        kind = self._id_type
        refusal = RowError(f"'id' must be {'a string' if kind is str else 'an integer'}, as in the rest of this output")
        kept = [row for row in rows if type(row["id"]) is kind]
        return kept, [error_record(row["id"], refusal) for row in rows if type(row["id"]) is not kind]

    def _parts(self) -> list[Path]:
        return sorted(self.output.glob("part-*.parquet")) if self.output.is_dir() else []

    def _with_image_path(self, row: dict) -> dict:
        """A generated image's row: the PNG written beside the output, its path in ``image``."""
        if PNG_KEY not in row:
            return row
        path = self.images / image_name(row["id"])
        self.images.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".tmp").write_bytes(base64.b64decode(row.pop(PNG_KEY)))
        path.with_suffix(".tmp").rename(path)
        return {**row, "image": str(path)}


def image_name(row_id: RowId) -> str:
    """A row's PNG file name: the id's first 64 characters, made safe, to read, and the sha256 of the
    whole id, so that no two ids share a file however long their common start (with 8 hex digits,
    two ids of one prefix met after about 70k rows and the second image replaced the first)."""
    digest = hashlib.sha256(json.dumps(row_id).encode()).hexdigest()
    return f"{_UNSAFE.sub('_', str(row_id))[:64]}-{digest}.png"


def complete_lines(path: Path) -> Iterator[str]:
    """The complete lines of a JSONL file, one at a time; once all are read, a torn last line (a
    killed writer's) is cut off the file."""
    if not path.exists():
        return
    end = 0
    with path.open("rb") as f:
        for line in f:  # binary: cut at b"\n" only
            if not line.endswith(b"\n"):
                break
            end += len(line)
            if line.strip():
                yield line.decode("utf-8")
    if end < path.stat().st_size:
        with path.open("r+b") as f:
            f.truncate(end)


def record_id(line: str) -> RowId | None:
    """A record's id, without parsing the rest of it: this job writes the id first, so only the
    id's own JSON is decoded; a line written otherwise (edited by hand) is parsed whole."""
    if first := _ID_FIELD.match(line):
        return _DECODER.raw_decode(line, first.end())[0]
    return json.loads(line)["id"]


def append_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
