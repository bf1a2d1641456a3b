"""A CPU replica computes on the threads its entry names (``resources.cpu_threads``), not only on the
one thread Ray's ``OMP_NUM_THREADS`` gives a replica that books a fraction of a core (issue 27).

Each case loads the engine in a fresh interpreter started as Ray starts a replica's worker
(``OMP_NUM_THREADS=1``): torch's thread count is process-wide, and the forward pass runs in a
worker thread of the replica, so that is where the count is read.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from candle.catalog import ModelSpec
from candle.demo.tiny_models import TINY_MODELS, build_tiny_store

PROBE = """
import sys, concurrent.futures
from pathlib import Path
from candle.catalog import ModelSpec
from candle.engines import load_engine
spec = ModelSpec.model_validate_json(sys.argv[1])
engine = load_engine(spec, Path(sys.argv[2]))
with concurrent.futures.ThreadPoolExecutor(1) as pool:  # where the replica runs its forward passes
    import torch
    print(pool.submit(torch.get_num_threads).result())
"""


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_store(tmp_path_factory.mktemp("threads-store"), ["minilm"])["minilm"]


def threads_in_replica(folder: Path, resources: dict) -> int:
    spec = ModelSpec(name="m", capability="text-embedding", repo_id=TINY_MODELS["minilm"], resources=resources)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, spec.model_dump_json(), str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return int(out.stdout.strip().splitlines()[-1])


def test_cpu_threads_sets_the_replicas_torch_threads(minilm: Path):
    assert threads_in_replica(minilm, {"num_cpus": 0.25, "cpu_threads": 3}) == 3


def test_without_cpu_threads_ray_s_thread_count_stays(minilm: Path):
    assert threads_in_replica(minilm, {"num_cpus": 0.25}) == 1


def test_cpu_threads_is_at_least_one():
    with pytest.raises(ValueError, match="cpu_threads"):
        ModelSpec(name="m", capability="text-embedding", repo_id="a/b", resources={"cpu_threads": 0})
