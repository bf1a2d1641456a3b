"""The batch job, submitted through Ray's job API to a cluster running the demo's MiniLM on Serve.

1,000 texts and one row without input: 1,000 vectors equal to an in-process SentenceTransformer
encode of the same texts, the bad row in the errors file; a job stopped halfway and submitted
again finishes with every id once and computes only the rows the first run had not written. The
same file through the engine in a Ray Data actor pool (``--via actors``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from ray import serve
from ray.job_submission import JobStatus, JobSubmissionClient
from sentence_transformers import SentenceTransformer

from candle.demo.tiny_models import TINY_MODELS
from candle.testing import free_port
from deployments.app import build_model_app
from tests.cluster.conftest import SimCluster

ROOT = Path(__file__).resolve().parents[2]
MINILM = "all-minilm-l6-v2"
ROWS = 1000
JOB_TIMEOUT_S = 300
TEXTS = [
    f"passage {i}: the {['cat', 'river', 'engine', 'poem'][i % 4]} number {i * 7919 % 1000} sat quietly"
    for i in range(ROWS)
]


@pytest.fixture(scope="module")
def minilm_app(sim: SimCluster) -> Iterator[None]:
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    serve.run(build_model_app({"catalog": "demo", "model": MINILM}), name=MINILM, route_prefix=None)
    try:
        yield
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def jobs(sim: SimCluster, minilm_app: None) -> JobSubmissionClient:
    client = JobSubmissionClient(sim.dashboard)
    deadline = time.monotonic() + 60
    while True:  # the head's job agent comes up a little after the dashboard
        try:
            client.list_jobs()
            return client
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


@pytest.fixture(scope="module")
def expected(tiny_store: Path) -> np.ndarray:
    model = SentenceTransformer(str(tiny_store / TINY_MODELS["minilm"]), device="cpu")
    return model.encode(TEXTS, normalize_embeddings=True)


@pytest.fixture
def rows(tmp_path: Path) -> Path:
    path = tmp_path / "passages.jsonl"
    lines = [json.dumps({"id": f"p{i}", "input": text}) for i, text in enumerate(TEXTS)]
    lines.insert(ROWS // 2, json.dumps({"id": "bad", "input": None}))
    path.write_text("\n".join(lines) + "\n")
    return path


def submit(client: JobSubmissionClient, *args: str) -> str:
    """The entrypoint names this interpreter: the job's PATH need not have the virtualenv on it.

    The code comes by PYTHONPATH, not as a working_dir package: the simulated nodes share one
    session folder, and a node that drops its reference to the package deletes it for all of them
    (seen as the job losing candle/catalog/demo.yaml mid-run).
    """
    entrypoint = " ".join([sys.executable, "-m", "candle.jobs.batch", "--catalog", "demo", "--model", MINILM, *args])
    deadline = time.monotonic() + 120
    while True:  # the job agent may come up after the dashboard answers list_jobs
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(1)


def finish(client: JobSubmissionClient, job: str) -> tuple[JobStatus, list[str]]:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not (status := client.get_job_status(job)).is_terminal():
        assert time.monotonic() < deadline, client.get_job_logs(job)
        time.sleep(0.2)
    return status, client.get_job_logs(job).splitlines()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def computed(lines: list[str]) -> int:
    """Rows the run computed, from its summary line."""
    summary = [line for line in lines if line.startswith("done: computed ")]
    assert len(summary) == 1, lines
    return int(summary[0].split()[2])


def assert_vectors(output: Path, errors: Path, expected: np.ndarray) -> None:
    records = read_jsonl(output)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == ROWS
    got = np.array([r["embedding"] for r in sorted(records, key=lambda r: int(r["id"][1:]))])
    cosine = (got * expected).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.999
    bad = read_jsonl(errors)
    assert [r["id"] for r in bad] == ["bad"] and "no 'input' text" in bad[0]["error"]


def test_batch_embeddings_through_serve_resume_after_stop(
    jobs: JobSubmissionClient, rows: Path, tmp_path: Path, expected: np.ndarray
):
    output, errors = tmp_path / "vectors.jsonl", tmp_path / "vectors.errors.jsonl"
    first = submit(jobs, "--input", str(rows), "--output", str(output), "--batch-size", "8", "--concurrency", "1")
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while len(read_jsonl_lines(output)) < 100:  # stop it once part of the rows is written
        assert not jobs.get_job_status(first).is_terminal(), jobs.get_job_logs(first)
        assert time.monotonic() < deadline
        time.sleep(0.05)
    jobs.stop_job(first)
    status, _ = finish(jobs, first)
    assert status == JobStatus.STOPPED
    written = len(read_jsonl_lines(output, complete=True)) + len(read_jsonl_lines(errors, complete=True))
    assert written < ROWS + 1  # stopped halfway, not after the end

    status, lines = finish(jobs, submit(jobs, "--input", str(rows), "--output", str(output)))
    assert status == JobStatus.SUCCEEDED, "\n".join(lines)
    assert computed(lines) == ROWS + 1 - written  # nothing written by the first run was computed again
    assert any(line.startswith("progress: ") and "rows/s" in line for line in lines), lines
    assert_vectors(output, errors, expected)


def test_batch_embeddings_in_an_actor_pool(jobs: JobSubmissionClient, rows: Path, tmp_path: Path, expected: np.ndarray):
    output = tmp_path / "vectors.jsonl"
    job = submit(jobs, "--input", str(rows), "--output", str(output), "--via", "actors", "--concurrency", "1")
    status, lines = finish(jobs, job)
    assert status == JobStatus.SUCCEEDED, "\n".join(lines)
    assert computed(lines) == ROWS + 1
    assert_vectors(output, tmp_path / "vectors.errors.jsonl", expected)


def read_jsonl_lines(path: Path, complete: bool = False) -> list[str]:
    """Lines of ``path``; with ``complete``, those ending in a newline (a stopped writer may tear the last)."""
    if not path.exists():
        return []
    text = path.read_text()
    if complete:
        text = text[: text.rfind("\n") + 1]
    return [line for line in text.splitlines() if line.strip()]
