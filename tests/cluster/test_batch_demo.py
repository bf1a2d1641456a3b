"""The batch job submitted with ``ray job submit`` to a running ``candle demo``, as a user does it.

The demo runs on a Ray node of 2 CPUs (a 2-core laptop, whatever this machine has), where its seven
replicas book 1.85: the job must run in the 0.15 CPU left, and a job that cannot start must say
within seconds what it waits for. The node is started first (``ray start --head``) and the demo
joins it, so that its job API listens on free ports: Ray's fixed job-agent port may belong to
another cluster on a shared machine, and a Ray the demo started itself would then refuse every job.
The node's processes fetch from the session's test hub (the demo's replicas run with the node's
environment, not the demo's), which serves the same tiny-model store as the demo's own hub.
Here, in the cluster phase, because the demo takes minutes to start on a shared 2-core machine; it
needs none of the simulated cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
from sentence_transformers import SentenceTransformer

from candle.catalog import Resources, load_catalog
from candle.demo.hub import LocalHub
from candle.demo.tiny_models import TINY_MODELS, build_tiny_store
from candle.testing import free_port
from tests.conftest import TEST_ENV
from tests.test_demo import running_demo

MINILM = "all-minilm-l6-v2"
ROWS = 1000
READY_TIMEOUT_S = 600
JOB_TIMEOUT_S = 600
WAITING_TIMEOUT_S = 120
RAY = str(Path(sys.executable).with_name("ray"))
pytestmark = pytest.mark.timeout(1800)
# What the job prints when its actor cannot be placed: what it asks, what the cluster has free.
ACTOR_WAITS = re.compile(
    r"waiting for ([\d.]+) CPU; the cluster has ([\d.]+) of 2 CPU free: (.*; )?1 actor \S*BatchWorker\S* asking 1 CPU\b"
)


@dataclass(frozen=True)
class DemoCluster:
    gcs: str  # the node's Ray address, for the job's driver
    dashboard: str  # the node's dashboard: the job API


@contextlib.contextmanager
def ray_node(env: dict[str, str], log: Path) -> Iterator[DemoCluster]:
    """A Ray head node of 2 CPUs on free ports (``ray start --head --block``), stopped on the way out."""
    port, dashboard = free_port(), free_port()
    command = [RAY, "start", "--head", "--block", "--num-cpus=2", "--num-gpus=0", "--node-ip-address=127.0.0.1"]
    command += [f"--port={port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1"]
    command += [f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={free_port()}"]
    command += [f"--ray-client-server-port={free_port()}"]
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield DemoCluster(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}")
    finally:
        spawned = psutil.Process(process.pid).children(recursive=True)
        process.send_signal(signal.SIGTERM)  # ray start --block stops its node's processes
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=60)
        for leftover in [process, *spawned]:
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                leftover.kill()


@pytest.fixture(scope="module")
def demo(hub_store: Path, hub_server: LocalHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoCluster]:
    build_tiny_store(hub_store, ["minilm"])
    home = tmp_path_factory.mktemp("demo")
    node_env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    node_env |= {**TEST_ENV, "HF_ENDPOINT": hub_server.endpoint, "HF_HUB_CACHE": str(home / "node-cache")}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_AUTH_MODE", "token")  # the node's token (~/.ray/auth_token), for the demo and the CLI
        with (
            ray_node({**node_env, "RAY_AUTH_MODE": "token"}, home / "node.log") as node,
            running_demo(hub_store, home, ray_address=node.gcs) as running,
        ):
            running.wait_ready([m.name for m in load_catalog("demo").models], READY_TIMEOUT_S)
            yield node


def ray_job(demo: DemoCluster, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``ray job COMMAND ARGS`` against the demo's node. Its Ray requires the token (``~/.ray/auth_token``),
    which Ray's CLI sends only when told to: ``RAY_AUTH_MODE=token`` (set for the module)."""
    argv = [RAY, "job", command, "--address", demo.dashboard, *args]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        log = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
        raise AssertionError(f"the job did not end in {JOB_TIMEOUT_S} s; its log ends:\n{log[-3000:]}") from None


def submit(demo: DemoCluster, *args: str, wait: bool = True) -> subprocess.CompletedProcess[str]:
    """``ray job submit`` of the batch job (this interpreter runs it: candle is installed in its venv),
    retried while the head's job agent is not up. The entrypoint names the node: Ray hands a job's
    driver the cluster this machine started last, which on a machine shared with other clusters may be
    another one (seen: the job ran on another developer's cluster)."""
    entrypoint = [f"RAY_ADDRESS={demo.gcs}", sys.executable, "-m", "candle.jobs.batch", "--catalog", *args]
    deadline = time.monotonic() + 120
    while (
        "No available agent"
        in (done := ray_job(demo, "submit", *([] if wait else ["--no-wait"]), "--", *entrypoint)).stderr
    ):
        assert time.monotonic() < deadline, done.stderr[-3000:]
        time.sleep(2)
    return done


def test_an_embedding_job_runs_on_the_busy_demo(demo: DemoCluster, hub_store: Path, tmp_path: Path):
    texts = [
        f"passage {i}: a {['cat', 'river', 'lamp', 'song'][i % 4]} numbered {i * 7919 % 1000}" for i in range(ROWS)
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": i, "input": t}) + "\n" for i, t in enumerate(texts)))
    output = tmp_path / "vectors.jsonl"
    args = ("demo", "--model", MINILM, "--input", str(tmp_path / "in.jsonl"), "--output", str(output))
    started = time.monotonic()
    submitted = submit(demo, *args, "--progress-interval", "1")
    print(f"ray job submit of {ROWS} rows to the busy demo: {time.monotonic() - started:.0f} s")
    lines = submitted.stdout.splitlines()
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert f"done: computed {ROWS} rows, 0 failed" in lines, lines[-20:]
    assert sum(line.startswith("progress: ") for line in lines) >= 2, lines  # printed while it ran, and at the end

    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == list(range(ROWS))
    got = np.array([r["embedding"] for r in sorted(records, key=lambda r: r["id"])])
    expected = SentenceTransformer(str(hub_store / TINY_MODELS["minilm"]), device="cpu").encode(texts)
    cosine = (got * expected).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.999


def test_a_job_that_cannot_start_says_what_it_waits_for(demo: DemoCluster, tmp_path: Path):
    """Its own engine in an actor that asks a whole CPU, on a node with 0.15 free: it never starts."""
    entry = load_catalog("demo").get(MINILM).model_copy(update={"resources": Resources(num_cpus=1)})
    (tmp_path / "catalog.yaml").write_text(json.dumps({"models": [entry.model_dump(mode="json")]}))  # JSON is YAML
    (tmp_path / "in.jsonl").write_text('{"id": 1, "input": "a cat"}\n')
    args = (str(tmp_path / "catalog.yaml"), "--model", MINILM, "--via", "actors", "--concurrency", "1")
    args += ("--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl"), "--progress-interval", "1")
    submitted = submit(demo, *args, wait=False)
    assert submitted.returncode == 0, submitted.stderr
    job = re.search(r"raysubmit_\w+", submitted.stdout)
    assert job, submitted.stdout
    try:
        deadline = time.monotonic() + WAITING_TIMEOUT_S
        while not (waiting := [line for line in job_log(demo, job.group()) if ACTOR_WAITS.match(line)]):
            assert time.monotonic() < deadline, job_log(demo, job.group())
            assert "RUNNING" in ray_job(demo, "status", job.group()).stdout, job_log(demo, job.group())
            time.sleep(1)
        print(f"the job's log: {waiting[0]}")
        found = ACTOR_WAITS.match(waiting[0])
        assert found and float(found.group(2)) < 1 <= float(found.group(1)), waiting
        assert "RUNNING" in ray_job(demo, "status", job.group()).stdout  # still waiting, not failed
    finally:
        ray_job(demo, "stop", job.group())


def job_log(demo: DemoCluster, job: str) -> list[str]:
    return ray_job(demo, "logs", job).stdout.splitlines()
