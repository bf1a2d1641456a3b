"""The batch job's records and files: what a row's result becomes on disk, what a rerun then
skips, and how an input file is cut into rows.

A vector is written in the shortest text that reads back as the same float32 values, every id
(any JSON string or 64-bit integer, any script) is found again by the rerun, a row whose id a
Parquet output cannot hold goes to the errors file, and a record's text is exactly what the output
and errors files hold. JSON Lines end at "\n" only, on the way in (Ray Data) and on the way out.
A PNG's name is unique to its id, a resume reads ids and not vectors, a row that is not UTF-8 fails
alone, and the job itself (in this process, on the session's Ray) computes only what an earlier
run did not write.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sentence_transformers import SentenceTransformer

from candle.demo.hub import LocalHub
from candle.demo.tiny_models import build_tiny_store
from candle.jobs import batch, batch_output
from candle.jobs.batch import read_rows
from candle.jobs.batch_output import BatchFiles
from candle.jobs.batch_progress import Waiting, waiting_line
from candle.jobs.batch_rows import PNG_KEY, RowError, error_record, read_row, success_record

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


# Two ids with one 64-character prefix whose names collided under the 8-hex-digit hash (found by search).
SHARED_PREFIX = "batch-2024/renders/" + "x" * 45
COLLIDED = (f"{SHARED_PREFIX}/30682", f"{SHARED_PREFIX}/59394")


def test_two_ids_with_one_prefix_get_two_pngs(tmp_path: Path) -> None:
    files = BatchFiles(str(tmp_path / "pictures.jsonl"))
    pictures = {row_id: f"picture of {row_id}".encode() for row_id in COLLIDED}
    records = [orjson.dumps({"id": i, PNG_KEY: base64.b64encode(png).decode()}).decode() for i, png in pictures.items()]
    assert files.write(records) == 0
    rows = [json.loads(line) for line in (tmp_path / "pictures.jsonl").read_text().splitlines()]
    assert {row["id"]: Path(row["image"]).read_bytes() for row in rows} == pictures
    assert len(list((tmp_path / "pictures.images").iterdir())) == 2


@settings(max_examples=100, deadline=None)
@given(ids=st.lists(IDS, min_size=2, max_size=8, unique_by=lambda i: json.dumps(i)))
def test_png_names_are_unique_safe_and_stable(ids: list[str | int]) -> None:
    names = [batch_output.image_name(i) for i in ids]
    assert len(set(names)) == len(ids)
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+\.png", n) and len(n.encode()) <= 255 for n in names)
    assert names == [batch_output.image_name(i) for i in ids]  # a rerun names an id's image the same


def test_resuming_reads_ids_not_vectors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The output's vectors are not parsed: memory stays far below the file's size while the ids are read,
    and none of the job's own records is handed whole to a JSON parser."""
    files = BatchFiles(str(tmp_path / "vectors.jsonl"))
    rng = np.random.default_rng(0)
    for start in range(0, 4000, 500):
        vectors = rng.standard_normal((500, 384), dtype=np.float32)
        files.write(
            [success_record(f"p{i}", (vectors[i - start : i - start + 1], 1)) for i in range(start, start + 500)]
        )
    size = (tmp_path / "vectors.jsonl").stat().st_size
    parsed_whole: list[str] = []
    loads = json.loads
    monkeypatch.setattr(json, "loads", lambda text, *a, **k: parsed_whole.append(text[:40]) or loads(text, *a, **k))
    tracemalloc.start()
    try:
        done = BatchFiles(str(tmp_path / "vectors.jsonl")).done_ids()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert done == {json.dumps(f"p{i}") for i in range(4000)}
    assert size > 10_000_000 and peak < 2_000_000, (size, peak)
    assert parsed_whole == [], f"{len(parsed_whole)} records parsed whole, e.g. {parsed_whole[0]!r}"


def test_a_torn_last_line_is_cut_off_and_not_done(tmp_path: Path) -> None:
    output = tmp_path / "vectors.jsonl"
    whole = success_record("a", (np.ones((1, 2), dtype=np.float32), 1)) + "\n"
    # Lines another writer made: spaces after the colons, and the id after the vector.
    edited = json.dumps({"id": "b", "embedding": [1.0]}) + "\n" + json.dumps({"embedding": [2.0], "id": 3}) + "\n"
    output.write_text(whole + edited + '{"id":"c","embedding":[0.5,')
    assert BatchFiles(str(output)).done_ids() == {'"a"', '"b"', "3"}
    assert output.read_text() == whole + edited


def test_a_row_that_is_not_utf8_is_refused_alone() -> None:
    row_id, error = read_row(b'{"id": "r7", "input": "caf\xe9"}')
    assert row_id == "r7" and isinstance(error, RowError)
    assert str(error) == "the row is not UTF-8 text: invalid continuation byte at byte 26"
    row_id, error = read_row(b'{"id": "r\xff", "input": "x"}')  # the id itself is not text: no id to record
    assert row_id is None and isinstance(error, RowError)
    assert read_row('{"id": "r8", "input": "café"}'.encode()) == ("r8", {"id": "r8", "input": "café"})


def test_a_non_utf8_row_is_read_beside_the_others(ray_cluster: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_bytes(
        b'{"id": 1, "input": "a"}\n{"id": 2, "input": "\xff"}\n{"id": 3, "input": "c"}\n'
    )
    rows = [r["row"] for r in read_rows(str(tmp_path / "in.jsonl")).take_all()]
    assert [read_row(r)[0] for r in rows] == [1, 2, 3]
    assert [type(read_row(r)[1]) for r in rows] == [dict, RowError, dict]


@pytest.fixture(scope="module")
def minilm(hub_store: Path) -> Path:
    return build_tiny_store(hub_store, ["minilm"])["minilm"]


def test_a_rerun_computes_only_the_rows_not_done(ray_cluster: dict[str, str], hub: LocalHub, minilm: Path, tmp_path):
    """The job itself, in this process, on the session's Ray (its own engine in one actor): the ids an
    earlier run wrote (output or errors) are neither computed nor written again, and a row that is not
    UTF-8 goes to the errors file while the others run."""
    texts = {f"p{i}": f"passage {i} about {['cats', 'rivers', 'engines'][i % 3]}" for i in range(8)}
    lines = [json.dumps({"id": i, "input": text}).encode() for i, text in texts.items()]
    lines.insert(4, b'{"id": "latin-1", "input": "caf\xe9"}')
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    output, errors = tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl"
    earlier = [success_record(f"p{i}", (np.zeros((1, 384), dtype=np.float32), 1)) for i in range(3)]
    BatchFiles(str(output)).write([*earlier, error_record("p3", RowError("an earlier failure"))])

    args = ["--catalog", "demo", "--model", "all-minilm-l6-v2", "--via", "actors", "--concurrency", "1"]
    summary = batch.run(
        batch.build_parser().parse_args([*args, "--input", f"{tmp_path}/in.jsonl", "--output", str(output)])
    )

    assert (summary.computed, summary.failed) == (5, 1)  # p4..p7 and the Latin-1 row, nothing written before
    written = output.read_text().splitlines()
    assert written[:3] == earlier
    got = {r["id"]: np.asarray(r["embedding"]) for r in map(json.loads, written[3:])}
    assert sorted(got) == ["p4", "p5", "p6", "p7"]
    expected = SentenceTransformer(str(minilm), device="cpu").encode([texts[i] for i in sorted(got)])
    for vector, want in zip((got[i] for i in sorted(got)), expected, strict=True):
        assert vector @ want / np.linalg.norm(vector) / np.linalg.norm(want) >= 0.999
    assert [json.loads(line) for line in errors.read_text().splitlines()] == [
        {"id": "p3", "error": "invalid row: an earlier failure"},
        {"id": "latin-1", "error": "invalid row: the row is not UTF-8 text: invalid continuation byte at byte 31"},
    ]


def test_the_waiting_line_names_what_waits_and_what_is_free() -> None:
    waiting = [
        Waiting("task", "ReadBinary->SplitBlocks(4)", 1, (("CPU", 0.05),)),
        Waiting("actor", "MapWorker(MapBatches(BatchWorker))", 2, (("CPU", 0.25), ("GPU", 1.0))),
    ]
    assert waiting_line(waiting, free={"CPU": 0.0}, total={"CPU": 2.0}) == (
        "waiting for 0.55 CPU, 2 GPU; the cluster has 0 of 2 CPU, 0 of 0 GPU free: 1 task ReadBinary->SplitBlocks(4)"
        " asking 0.05 CPU; 2 actors MapWorker(MapBatches(BatchWorker)) asking 0.25 CPU, 1 GPU each"
    )


def test_the_batch_job_loads_no_deployment_and_no_fastapi() -> None:
    """Turning rows into calls is the API layer's (``candle.api.calls``): the job's driver and its
    workers' modules reach it without the gateway, a replica module or FastAPI."""
    probe = (
        "import json, runpy, sys\n"
        "sys.argv = ['candle.jobs.batch', '--help']\n"
        "try:\n"
        "    runpy.run_module('candle.jobs.batch', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "import candle.jobs.batch_rows, candle.jobs.batch_workers\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    *help_lines, modules_line = done.stdout.strip().splitlines()
    modules = json.loads(modules_line)
    assert "--model" in "\n".join(help_lines)
    assert "candle.api.calls" in modules  # the probe saw the job's imports
    assert [m for m in modules if m.split(".")[0] in ("deployments", "fastapi")] == []
