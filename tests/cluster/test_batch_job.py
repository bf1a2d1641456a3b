"""The batch job, submitted through Ray's job API to a cluster running the demo's models on Serve.

Embeddings: 1,000 texts and one bad row give 1,000 vectors equal to an in-process
SentenceTransformer encode and the bad row in the errors file; a job stopped halfway and submitted
again finishes with every id once and computes only the rows the first run had not written.
The same for text-to-text (answers equal to the engine's own, in this process) and for images
(PNG files beside the output, the first run's files left untouched), and embeddings through the
engine in a Ray Data actor pool (``--via actors``), into Parquet. One cluster and one set of
deployments serve the whole module.
"""

from __future__ import annotations

import base64
import io
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from ray import serve
from ray.job_submission import JobStatus, JobSubmissionClient
from ray.serve.api import RunTarget
from sentence_transformers import SentenceTransformer

from candle.catalog import load_catalog
from candle.contracts import CompletionCall, GenerationParams
from candle.demo.tiny_models import TINY_MODELS, build_tiny_store
from candle.engines.chat.transformers import TransformersTextEngine
from candle.testing import free_port
from deployments.app import build_model_app
from tests.cluster.conftest import SimCluster
from tests.replica_threads import replica_threads

ROOT = Path(__file__).resolve().parents[2]
MINILM, CODER, SD3 = "all-minilm-l6-v2", "qwen3-coder-tiny", "sd3.5-turbo-tiny"
ROWS = 1000
JOB_TIMEOUT_S = 300
TEXTS = [
    f"passage {i}: the {['cat', 'river', 'engine', 'poem'][i % 4]} number {i * 7919 % 1000} sat quietly"
    for i in range(ROWS)
]
PROMPTS = [f"def step_{i}(x):" for i in range(40)]
ANSWER_TOKENS = 6
T = TypeVar("T")
# The first test also waits for the cluster and three deployments to start (minutes on a busy machine).
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def demo_apps(sim: SimCluster, tiny_store: Path) -> Iterator[None]:
    """MiniLM, the tiny Qwen3-Coder and the tiny SD3 deployed from the demo catalog, as `candle demo` does."""
    build_tiny_store(tiny_store, ["qwen3"])
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    apps = [(build_model_app({"catalog": "demo", "model": name}), name) for name in (MINILM, CODER, SD3)]
    serve.run_many([RunTarget(app, name=name, route_prefix=None) for app, name in apps])
    try:
        yield
    finally:
        serve.shutdown()


@dataclass(frozen=True)
class Jobs:
    """The simulated cluster's job API, and the address its jobs must join.

    Ray hands a job's driver the address of the cluster that last wrote /tmp/ray/ray_current_cluster,
    which on a machine running other Ray clusters may not be this one: the entrypoint names it.
    """

    client: JobSubmissionClient
    address: str


@pytest.fixture(scope="module")
def jobs(sim: SimCluster, demo_apps: None) -> Jobs:
    return Jobs(until_agent_answers(lambda: JobSubmissionClient(sim.dashboard)), sim.cluster.address)


def until_agent_answers(call: Callable[[], T]) -> T:
    """``call()``, retried while the head's job agent is not up (it starts after the dashboard answers)."""
    deadline = time.monotonic() + 120
    while True:
        try:
            return call()
        except (RuntimeError, ConnectionError) as e:
            if (isinstance(e, RuntimeError) and "No available agent" not in str(e)) or time.monotonic() > deadline:
                raise
            time.sleep(1)


@pytest.fixture(scope="module")
def vectors(tiny_store: Path) -> np.ndarray:
    model = SentenceTransformer(str(tiny_store / TINY_MODELS["minilm"]), device="cpu")
    return model.encode(TEXTS, normalize_embeddings=True)


@pytest.fixture(scope="module")
def answers(tiny_store: Path) -> list[str]:
    """Greedy answers of the tiny Qwen3-Coder, in this process, on one thread like the replica's."""
    with replica_threads():
        engine = TransformersTextEngine(tiny_store / TINY_MODELS["qwen3"], load_catalog("demo").get(CODER))
        params = GenerationParams(max_tokens=ANSWER_TOKENS, temperature=0.0)
        return ["".join(c.text for c in engine.complete(CompletionCall(p, params))) for p in PROMPTS]


def write_rows(path: Path, rows: list[dict], *bad: dict) -> Path:
    """``rows`` as JSONL with the ``bad`` rows in the middle."""
    lines = [json.dumps(row) for row in rows]
    lines[len(lines) // 2 : len(lines) // 2] = [json.dumps(row) for row in bad]
    path.write_text("\n".join(lines) + "\n")
    return path


def submit(jobs: Jobs, model: str, *args: str) -> str:
    """The entrypoint names this interpreter: the job's PATH need not have the virtualenv on it.

    The code comes by PYTHONPATH, not as a working_dir package: the simulated nodes share one
    session folder, and a node that drops its reference to the package deletes it for all of them
    (seen as the job losing candle/catalog/demo.yaml mid-run).
    """
    command = [sys.executable, "-m", "candle.jobs.batch", "--catalog", "demo", "--model", model, *args]
    entrypoint = " ".join([f"RAY_ADDRESS={jobs.address}", *command])
    runtime_env = {"env_vars": {"PYTHONPATH": str(ROOT)}}
    return until_agent_answers(lambda: jobs.client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env))


def finish(jobs: Jobs, job: str) -> tuple[JobStatus, list[str]]:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not (status := jobs.client.get_job_status(job)).is_terminal():
        assert time.monotonic() < deadline, jobs.client.get_job_logs(job)
        time.sleep(0.2)
    return status, jobs.client.get_job_logs(job).splitlines()


def complete_lines(path: Path) -> list[str]:
    """The lines of ``path`` that end in a newline (a stopped writer may tear the last)."""
    text = path.read_text() if path.exists() else ""
    return [line for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in complete_lines(path)]


def computed(lines: list[str]) -> int:
    """Rows the run computed, from its summary line."""
    summary = [line for line in lines if line.startswith("done: computed ")]
    assert len(summary) == 1, lines
    return int(summary[0].split()[2])


def input_rows(args: tuple[str, ...]) -> int:
    return sum(1 for line in Path(args[args.index("--input") + 1]).read_text().splitlines() if line.strip())


def start_and_stop(jobs: Jobs, model: str, output: Path, stop_after: int, *args: str) -> int:
    """Run the job on one actor and stop it once ``stop_after`` rows are written; how many it wrote."""
    errors = output.with_name(output.name.removesuffix(".jsonl") + ".errors.jsonl")
    job = submit(jobs, model, "--output", str(output), *args, "--concurrency", "1")
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while len(complete_lines(output)) < stop_after:
        assert not jobs.client.get_job_status(job).is_terminal(), jobs.client.get_job_logs(job)
        assert time.monotonic() < deadline
        time.sleep(0.05)
    jobs.client.stop_job(job)
    status, _ = finish(jobs, job)
    assert status == JobStatus.STOPPED
    written = len(complete_lines(output)) + len(complete_lines(errors))
    assert written < input_rows(args)  # stopped halfway, not after the end
    return written


def resume(jobs: Jobs, model: str, output: Path, written: int, *args: str) -> None:
    """Run the job again to the end: it computes exactly the rows the first run had not written."""
    status, lines = finish(jobs, submit(jobs, model, "--output", str(output), *args))
    assert status == JobStatus.SUCCEEDED, "\n".join(lines)
    assert computed(lines) == input_rows(args) - written  # nothing written before was computed again
    assert any(line.startswith("progress: ") and "rows/s" in line for line in lines), lines


def assert_vectors(records: list[dict], errors: Path, expected: np.ndarray) -> None:
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == ROWS
    got = np.array([r["embedding"] for r in sorted(records, key=lambda r: int(r["id"][1:]))])
    cosine = (got * expected).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.999
    bad = {r["id"]: r["error"] for r in read_jsonl(errors)}
    assert sorted(bad) == ["bad", "wide"], bad
    assert bad["bad"].startswith("invalid row: input"), bad
    assert "dimensions must be at most 384" in bad["wide"], bad  # the engine refused it, beside good rows


@pytest.fixture(scope="module")
def passages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [{"id": f"p{i}", "input": text} for i, text in enumerate(TEXTS)]
    bad = {"id": "bad", "input": None}, {"id": "wide", "input": "a passage", "dimensions": 100_000}
    return write_rows(tmp_path_factory.mktemp("passages") / "passages.jsonl", rows, *bad)


def test_embeddings_through_serve_resume_after_stop(jobs: Jobs, passages: Path, tmp_path: Path, vectors: np.ndarray):
    # 40-row batches, sent in lists as online requests are, the engine's refusal inside one of them.
    output, args = tmp_path / "vectors.jsonl", ("--input", str(passages), "--batch-size", "40")
    resume(jobs, MINILM, output, start_and_stop(jobs, MINILM, output, 100, *args), *args)
    assert_vectors(read_jsonl(output), tmp_path / "vectors.errors.jsonl", vectors)


def test_embeddings_in_an_actor_pool_into_parquet(jobs: Jobs, passages: Path, tmp_path: Path, vectors: np.ndarray):
    output = tmp_path / "vectors.parquet"
    job = submit(jobs, MINILM, "--input", str(passages), "--output", str(output), "--via", "actors")
    status, lines = finish(jobs, job)
    assert status == JobStatus.SUCCEEDED, "\n".join(lines)
    assert computed(lines) == ROWS + 2
    assert sorted(p.suffix for p in output.iterdir()) == [".parquet"] * len(list(output.iterdir()))
    assert_vectors(pq.read_table(output).to_pylist(), tmp_path / "vectors.errors.jsonl", vectors)


def test_text_through_serve_resume_after_stop(jobs: Jobs, tmp_path: Path, answers: list[str]):
    """Half the rows as chat-free prompts, half as chat messages that must not carry images."""
    rows = [{"id": i, "prompt": p, "max_tokens": ANSWER_TOKENS, "temperature": 0} for i, p in enumerate(PROMPTS)]
    bad = {"id": "too-long", "prompt": "x", "max_tokens": 100_000}
    output, args = tmp_path / "answers.jsonl", ("--input", str(write_rows(tmp_path / "in.jsonl", rows, bad)))
    resume(jobs, CODER, output, start_and_stop(jobs, CODER, output, 4, *args, "--batch-size", "1"), *args)
    records = read_jsonl(output)
    assert sorted(r["id"] for r in records) == list(range(len(PROMPTS)))
    assert {r["id"]: r["text"] for r in records} == dict(enumerate(answers))
    assert all(r["finish_reason"] in ("stop", "length") for r in records)
    errors = read_jsonl(tmp_path / "answers.errors.jsonl")
    assert errors == [{"id": "too-long", "error": "invalid row: max_tokens must be at most 256, got 100000"}]


def test_chat_rows_answer_like_prompts(jobs: Jobs, tmp_path: Path):
    """``messages`` rows run through the chat template; an image sent to a text model is that row's error."""
    image = "data:image/png;base64," + base64.b64encode(png_pixel()).decode()
    rows = [{"id": i, "messages": [{"role": "user", "content": f"task {i}"}], "max_tokens": 4} for i in range(3)]
    bad = {"id": "img", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}}]}]}
    output = tmp_path / "chat.jsonl"
    rows_path = write_rows(tmp_path / "in.jsonl", rows, bad)
    status, lines = finish(jobs, submit(jobs, CODER, "--input", str(rows_path), "--output", str(output)))
    assert status == JobStatus.SUCCEEDED, "\n".join(lines)
    assert sorted(r["id"] for r in read_jsonl(output)) == [0, 1, 2]
    assert read_jsonl(tmp_path / "chat.errors.jsonl") == [
        {"id": "img", "error": f"invalid row: The model `{CODER}` does not accept images."}
    ]


def test_images_through_serve_resume_after_stop(jobs: Jobs, tmp_path: Path):
    rows = [{"id": f"img/{i}", "prompt": "a red square", "size": "64x64", "seed": i % 3} for i in range(16)]
    bad = {"id": "bad-size", "prompt": "a cat", "size": "huge"}
    output, images = tmp_path / "pictures.jsonl", tmp_path / "pictures.images"
    args = ("--input", str(write_rows(tmp_path / "in.jsonl", rows, bad)), "--batch-size", "1")
    written = start_and_stop(jobs, SD3, output, 2, *args)
    first = {r["image"]: Path(r["image"]).stat().st_mtime_ns for r in read_jsonl(output)}
    resume(jobs, SD3, output, written, *args)

    records = {r["id"]: r for r in read_jsonl(output)}
    assert sorted(records) == sorted(r["id"] for r in rows)
    assert {path: Path(path).stat().st_mtime_ns for path in first} == first  # the first run's PNGs: untouched
    pixels = {}
    for row_id, record in records.items():
        path = Path(record["image"])
        assert path.parent == images and path.suffix == ".png"
        with Image.open(path) as picture:
            assert picture.format == "PNG" and picture.size == (64, 64)
            pixels[row_id] = np.asarray(picture.convert("RGB"))
    assert sorted(p.name for p in images.iterdir()) == sorted(Path(r["image"]).name for r in records.values())
    assert np.array_equal(pixels["img/0"], pixels["img/3"])  # same prompt and seed: the same picture
    assert not np.array_equal(pixels["img/0"], pixels["img/1"])
    assert read_jsonl(tmp_path / "pictures.errors.jsonl") == [
        {"id": "bad-size", "error": "invalid row: size must look like '1024x1024', got 'huge'"}
    ]


def png_pixel() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), "red").save(buffer, format="PNG")
    return buffer.getvalue()
