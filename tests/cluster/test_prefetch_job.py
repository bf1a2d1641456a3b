"""The prefetch job, submitted through Ray's job API to the simulated cluster as an operator would.

It must warm exactly the nodes a model can land on (SD3 with its production placement: only the
multi-GPU node), every node for a plain repo id or with ``--all-nodes``, and fail with one line
when a node cannot fetch, after the others have finished.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import yaml
from ray.job_submission import JobStatus, JobSubmissionClient

from candle.catalog import load_catalog
from tests.cluster.conftest import NODES, SimCluster

ROOT = Path(__file__).resolve().parents[2]
SD3 = "sd3-warm"
SD3_REPO, MINILM_REPO = "prefetch/sd3", "prefetch/minilm"  # tiny repos no deployment uses
JOB_TIMEOUT_S = 120
EVERY_NODE = [node.name for node in NODES]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SD3 with the production placement of SD3.5 (2 GPUs, multi-gpu nodes) and a small CPU share."""
    resources = load_catalog("production").get("sd3.5-large-turbo").resources.model_dump() | {"num_cpus": 0.25}
    entry = {"name": SD3, "capability": "text-to-image", "repo_id": SD3_REPO, "resources": resources}
    path = tmp_path_factory.mktemp("catalog") / "catalog.yaml"
    path.write_text(yaml.safe_dump({"models": [entry]}))
    return path


@pytest.fixture(scope="module")
def jobs(sim: SimCluster) -> JobSubmissionClient:
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


def run_job(client: JobSubmissionClient, *args: str) -> tuple[JobStatus, list[str]]:
    """Submit the prefetch job with the repo as working dir; return its final status and log lines.

    The entrypoint names this interpreter rather than `python`: the job's PATH is the test's, which
    need not have the virtualenv on it.
    """
    entrypoint = " ".join([sys.executable, "-m", "candle.jobs.prefetch", *args])
    job = client.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": str(ROOT)})
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not (status := client.get_job_status(job)).is_terminal():
        assert time.monotonic() < deadline, client.get_job_logs(job)
        time.sleep(0.5)
    return status, client.get_job_logs(job).splitlines()


def holders(sim: SimCluster, repo_id: str) -> list[str]:
    return [node for node in EVERY_NODE if sim.snapshots(node, repo_id)]


def done_lines(sim: SimCluster, lines: list[str], name: str) -> dict[str, str]:
    """Node name -> snapshot folder, from the job's summary lines for ``name``."""
    prefix = f"{name} node="
    summaries = [line.removeprefix(prefix).split(" done snapshot=") for line in lines if line.startswith(prefix)]
    return {sim.names[node_id]: folder for node_id, folder in (s for s in summaries if len(s) == 2)}


def test_prefetch_warms_the_nodes_a_model_can_land_on(sim: SimCluster, jobs: JobSubmissionClient, catalog: Path):
    sim.hub.state.throttles[SD3_REPO] = 512 * 1024  # slow enough for progress lines
    try:
        status, lines = run_job(jobs, SD3, MINILM_REPO, "--catalog", str(catalog), "--progress-interval", "0.2")
    finally:
        sim.hub.state.throttles.clear()
    assert status == JobStatus.SUCCEEDED, "\n".join(lines)
    assert holders(sim, SD3_REPO) == ["multi-gpu"]  # 2 GPUs and the multi-gpu label: nowhere else
    assert holders(sim, MINILM_REPO) == EVERY_NODE  # not in the catalog: every node
    sd3_done, minilm_done = done_lines(sim, lines, SD3), done_lines(sim, lines, MINILM_REPO)
    assert sd3_done == {"multi-gpu": str(sim.snapshots("multi-gpu", SD3_REPO)[0])}
    assert minilm_done == {node: str(sim.snapshots(node, MINILM_REPO)[0]) for node in EVERY_NODE}
    multi = sim.node_ids["multi-gpu"]
    assert any(line.startswith(f"{SD3} node={multi} downloading ") and " MB" in line for line in lines), lines


def test_prefetch_all_nodes_finishes_the_others_and_fails_in_one_line(
    sim: SimCluster, jobs: JobSubmissionClient, catalog: Path
):
    status, lines = run_job(jobs, SD3, "nobody/no-such-model", "--all-nodes", "--catalog", str(catalog))
    assert status == JobStatus.FAILED
    assert holders(sim, SD3_REPO) == EVERY_NODE
    assert set(done_lines(sim, lines, SD3)) == set(EVERY_NODE)
    errors = [line for line in lines if line.startswith("candle prefetch: error:")]
    assert len(errors) == 1, lines
    assert errors[0].startswith("candle prefetch: error: nobody/no-such-model on node ")
    assert "repository not found" in errors[0] and errors[0].endswith(f"(and {len(NODES) - 1} more)")
