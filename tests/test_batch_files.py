"""The batch job's records and files: what a row's result becomes on disk, what a rerun then
skips, and how an input file is cut into rows.

A vector is written in the shortest text that reads back as the same float32 values, every id
(any JSON string or 64-bit integer, any script) is found again by the rerun, a row whose id a
Parquet output cannot hold goes to the errors file, and a record's text is exactly what the output
and errors files hold. JSON Lines end at "\n" only, on the way in (Ray Data) and on the way out.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from candle.jobs.batch import read_rows
from candle.jobs.batch_output import BatchFiles
from candle.jobs.batch_rows import RowError, error_record, read_row, success_record

FLOAT32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
IDS = st.one_of(st.text(max_size=20), st.integers(min_value=-(2**63), max_value=2**63 - 1))  # a row's ids


@settings(max_examples=200, deadline=None)
@given(vector=arrays(np.float32, st.integers(1, 64), elements=FLOAT32), row_id=IDS)
def test_a_vector_reads_back_as_the_same_float32_values(vector: np.ndarray, row_id: str | int) -> None:
    record = json.loads(success_record(row_id, (vector[np.newaxis, :], 3)))
    assert record["id"] == row_id
    assert np.array_equal(np.asarray(record["embedding"], dtype=np.float32), vector)


@settings(max_examples=50, deadline=None)
@given(ids=st.lists(IDS, min_size=1, max_size=8, unique_by=lambda i: json.dumps(i)))
@example(ids=["line\u2028separator", "next\x85line", "file\x1cseparator", 1])  # str.splitlines breaks there
def test_a_rerun_finds_every_written_id(tmp_path_factory: pytest.TempPathFactory, ids: list[str | int]) -> None:
    folder = tmp_path_factory.mktemp("batch")
    vector = np.ones((1, 4), dtype=np.float32)
    records = [success_record(i, (vector, 1)) for i in ids[1:]] + [error_record(ids[0], ValueError("no"))]
    mixed = sum(type(i) is not type(ids[1]) for i in ids[1:])  # ids a Parquet output refuses (its first's type)
    for output, failed in ((folder / "out.jsonl", 1), (folder / "out.parquet", 1 + mixed)):
        assert BatchFiles(str(output)).write(records) == failed
        assert BatchFiles(str(output)).done_ids() == {json.dumps(i) for i in ids}


def test_the_output_holds_the_records_text(tmp_path: Path) -> None:
    files = BatchFiles(str(tmp_path / "out.jsonl"))
    records = [success_record("naïve ☃", (np.array([[0.1, -2.5]], dtype=np.float32), 2))]
    files.write([*records, error_record(7, RowError("too long"))])
    assert (tmp_path / "out.jsonl").read_text(encoding="utf-8") == '{"id":"naïve ☃","embedding":[0.1,-2.5]}\n'
    assert json.loads((tmp_path / "out.errors.jsonl").read_text(encoding="utf-8")) == {
        "id": 7,
        "error": "invalid row: too long",
    }


@pytest.mark.parametrize("row_id", [2**63, -(2**63) - 1, 1.5, None, [1]])
def test_an_id_the_output_cannot_hold_is_refused(row_id: object) -> None:
    found, row = read_row(json.dumps({"id": row_id, "input": "x"}))
    assert found is None and isinstance(row, RowError)
    assert str(row) == "the row has no 'id' (a string or a 64-bit integer)"


def test_a_parquet_output_keeps_one_id_type_and_refuses_the_other(tmp_path: Path) -> None:
    vector = np.ones((1, 2), dtype=np.float32)
    assert BatchFiles(str(tmp_path / "out.parquet")).write([success_record(1, (vector, 1))]) == 0
    files = BatchFiles(str(tmp_path / "out.parquet"))  # a rerun: the type comes from the first part
    assert files.write([success_record("two", (vector, 1)), success_record(3, (vector, 1))]) == 1
    assert pq.read_table(tmp_path / "out.parquet").column("id").to_pylist() == [1, 3]
    refused = json.loads((tmp_path / "out.errors.jsonl").read_text())
    assert refused == {"id": "two", "error": "invalid row: 'id' must be an integer, as in the rest of this output"}
    assert files.done_ids() == {"1", '"two"', "3"}


def test_an_input_row_is_cut_at_newlines_only(ray_cluster: dict[str, str], tmp_path: Path) -> None:
    rows = [{"id": "a\u2028b", "input": "one\x85two"}, {"id": 2, "input": "three\x1cfour"}, {"id": 3, "input": "five"}]
    lines = [orjson.dumps(row) for row in rows]  # orjson leaves those separators raw, as JSON allows
    (tmp_path / "in.jsonl").write_bytes(lines[0] + b"\r\n" + lines[1] + b"\n\n" + lines[2])
    read = read_rows(str(tmp_path / "in.jsonl")).take_all()
    assert [json.loads(r["row"]) for r in read] == rows
