"""One simulated multi-node cluster for the tests under tests/cluster/, in a pytest process of their own.

These tests start their own Ray cluster, so they cannot share a process with the main suite's
local Ray (tests/conftest.py): ``make test`` runs them second, as ``pytest -m cluster tests/cluster``,
and the main run deselects them (``-m "not cluster"`` in pyproject's addopts).

The cluster: a CPU head (dashboard on, for the job API), a 1-GPU node labelled ``gpu`` and a 4-GPU
node labelled ``multi-gpu``, every node with its own HF cache folder, all fetching from the
session's test hub. Each module gets its own (a process joins one cluster at a time).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from ray.cluster_utils import Cluster

from candle.demo.hub import LocalHub
from candle.demo.tiny_models import build_tiny_store
from candle.testing.cluster import NODE_CLASS, NodeSpec, node_hub_cache, simulated_cluster
from tests.conftest import TEST_ENV

NODES = (
    NodeSpec("head", num_cpus=3, labels={NODE_CLASS: "cpu"}),
    NodeSpec("gpu", num_cpus=1, num_gpus=1, labels={NODE_CLASS: "gpu"}),
    NodeSpec("multi-gpu", num_cpus=2, num_gpus=4, labels={NODE_CLASS: "multi-gpu"}),
)
# Serve says a replica waits for a node after this many seconds (30 by default): keep tests short.
SERVE_ENV = {"RAY_SERVE_SLOW_STARTUP_WARNING_S": "2", "RAY_SERVE_SLOW_STARTUP_WARNING_PERIOD_S": "2"}
# Copies of tiny repos under names no deployment uses, so the prefetch job is what puts them on nodes.
PREFETCH_REPOS = {"prefetch/sd3": "sd3", "prefetch/minilm": "minilm"}


@dataclass(frozen=True)
class SimCluster:
    cluster: Cluster
    node_ids: dict[str, str]  # node name -> Ray node id
    cache_root: Path
    hub: LocalHub

    @property
    def names(self) -> dict[str, str]:
        """Ray node id -> node name."""
        return {node_id: name for name, node_id in self.node_ids.items()}

    @property
    def dashboard(self) -> str:
        return f"http://{self.cluster.webui_url}"

    def snapshots(self, node: str, repo_id: str) -> list[Path]:
        """Snapshot folders of ``repo_id`` in ``node``'s own HF cache."""
        folder = node_hub_cache(self.cache_root, node) / f"models--{repo_id.replace('/', '--')}" / "snapshots"
        return sorted(folder.iterdir()) if folder.is_dir() else []


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/cluster/ runs in the cluster process: mark it, whatever the module says."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def tiny_store(hub_store: Path) -> Path:
    built = build_tiny_store(hub_store, ["sd3", "flux", "minilm"])
    for repo_id, name in PREFETCH_REPOS.items():
        if not (hub_store / repo_id).exists():
            shutil.copytree(built[name], hub_store / repo_id)
    return hub_store


@pytest.fixture(scope="module")  # one per module: other modules here start clusters of their own
def sim(tiny_store: Path, hub_server: LocalHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimCluster]:
    cache_root = tmp_path_factory.mktemp("node-caches")
    env = {**TEST_ENV, **SERVE_ENV, "HF_ENDPOINT": hub_server.endpoint}
    with simulated_cluster(NODES, env, cache_root=cache_root, dashboard=True) as (cluster, ids):
        yield SimCluster(cluster, ids, cache_root, hub_server)
