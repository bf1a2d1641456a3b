"""A multi-node Ray cluster on one machine, for placement tests and local development.

Each simulated node is a real raylet with its own fake GPUs (Ray sets ``CUDA_VISIBLE_DEVICES``
for actors that ask for them), its own Ray node labels, and its own environment, so a node can
have its own Hugging Face cache (``HF_HOME``/``HF_HUB_CACHE``) and hub endpoint exactly like a
separate machine would. The first node is the head; it can run the dashboard, which the job API
(``ray job submit``) needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import ray
from ray.cluster_utils import Cluster

from candle.testing import free_port

T = TypeVar("T")

NODE_CLASS = "candle.io/node-class"


@dataclass(frozen=True)
class NodeSpec:
    """One simulated node: ``name`` is how tests refer to it; ``env`` adds to the cluster's base env."""

    name: str
    num_cpus: int = 1
    num_gpus: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)


def node_cache(cache_root: Path, name: str) -> Path:
    """The ``HF_HOME`` that :func:`simulated_cluster` gives node ``name`` under ``cache_root``."""
    return Path(cache_root) / name


def node_hub_cache(cache_root: Path, name: str) -> Path:
    """The node's ``HF_HUB_CACHE``, where its downloader writes ``models--org--name`` folders."""
    return node_cache(cache_root, name) / "hub"


def _node_args(node: NodeSpec, base_env: Mapping[str, str], cache_root: Path | None) -> dict[str, Any]:
    env = dict(base_env)
    if cache_root is not None:
        env |= {
            "HF_HOME": str(node_cache(cache_root, node.name)),
            "HF_HUB_CACHE": str(node_hub_cache(cache_root, node.name)),
        }
    env |= node.env
    return {"num_cpus": node.num_cpus, "num_gpus": node.num_gpus, "labels": dict(node.labels), "env_vars": env}


@contextmanager
def simulated_cluster(
    nodes: Sequence[NodeSpec],
    base_env: Mapping[str, str] | None = None,
    *,
    cache_root: Path | None = None,
    dashboard: bool = False,
    namespace: str = "candle-tests",
) -> Iterator[tuple[Cluster, dict[str, str]]]:
    """Start ``nodes`` (the first is the head), connect this process, yield ``(cluster, {name: node id})``.

    Every node's processes see ``base_env``, then its own cache folders (with ``cache_root``), then
    ``NodeSpec.env``. With ``dashboard`` the head serves the dashboard and job API on a free
    loopback port (``cluster.webui_url``). Everything is shut down on exit.
    """
    if not nodes:
        raise ValueError("a cluster needs at least a head node")
    if ray.is_initialized():
        raise RuntimeError("this process is already connected to Ray; a simulated cluster needs a process of its own")
    base_env = base_env or {}
    head, *workers = nodes
    head_args = _node_args(head, base_env, cache_root)
    head_args["include_dashboard"] = dashboard
    if dashboard:
        # The job API goes through the head's dashboard agent: on a free port, not Ray's fixed 52365,
        # which another Ray instance on the machine may hold (then every job submission is refused).
        ports = {"dashboard_port": free_port(), "dashboard_agent_listen_port": free_port()}
        head_args |= {"dashboard_host": "127.0.0.1", **ports}
    worker_args = [_node_args(node, base_env, cache_root) for node in workers]
    cluster, node_ids = _again_if_slow(lambda: _started_cluster(head_args, worker_args), lambda: None)
    try:
        ids = dict(zip([n.name for n in nodes], node_ids, strict=True))
        ray.init(address=cluster.address, namespace=namespace)
        yield cluster, ids
    finally:
        ray.shutdown()
        cluster.shutdown()


# Ray gives a new raylet a fixed 30 s to register (``ray._private.node``); on two busy cores that can
# pass, and Ray raises this. One more start from scratch is cheaper than a failed module of tests.
_SLOW_START = "timed out during startup"


def start_local_ray(**options: Any) -> None:
    """``ray.init(address="local", **options)``: a fresh local Ray, started once more if its raylet
    missed the registration window."""
    _again_if_slow(lambda: ray.init(address="local", **options), ray.shutdown)


def _started_cluster(head_args: dict[str, Any], worker_args: list[dict[str, Any]]) -> tuple[Cluster, list[str]]:
    """A started cluster and its node ids (head first); nothing left running if it fails."""
    cluster = Cluster()
    try:
        node_ids = [cluster.add_node(**head_args).node_id]
        node_ids += [cluster.add_node(**args).node_id for args in worker_args]
        cluster.wait_for_nodes()
        return cluster, node_ids
    except BaseException:
        cluster.shutdown()
        raise


def _again_if_slow(start: Callable[[], T], undo: Callable[[], None]) -> T:
    """``start()``, and once more after ``undo()`` if it failed only because a raylet was too slow."""
    try:
        return start()
    except Exception as e:
        if _SLOW_START not in str(e):
            raise
        undo()
        return start()
