"""A model bigger than a node, a model with libraries of its own, and one commit per branch, on a
simulated cluster of three 8-GPU nodes (fake GPUs, labelled ``gpu-8x``) and a CPU head.

The tiny MiniLM runs with Kimi K2's production placement (tensor parallel 8, pipeline parallel 2):
its placement group must take exactly two of the three 8-GPU nodes, its replica must bring the
weights onto both, and the prefetch job must warm every node its bundles may land on. A second
MiniLM app carries a ``runtime_env`` that only its own replica sees. Then a branch moves on the hub
between two nodes' fetches.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
import yaml
from huggingface_hub import HfApi
from ray import serve
from ray.serve.api import RunTarget
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from candle.catalog import load_catalog
from candle.demo.hub import LocalHub, write_repo
from candle.download import fetch
from candle.jobs import prefetch
from candle.testing import free_port
from candle.testing.cluster import NODE_CLASS, NodeSpec, simulated_cluster
from deployments.app import build_model_app
from tests.cluster.conftest import SERVE_ENV, SimCluster
from tests.conftest import TEST_ENV

NODES = (
    NodeSpec("head", num_cpus=3, labels={NODE_CLASS: "cpu"}),
    *(NodeSpec(f"eight-{n}", num_cpus=9, num_gpus=8, labels={NODE_CLASS: "gpu-8x"}) for n in "abc"),
)
EIGHTS = ["eight-a", "eight-b", "eight-c"]
KIMI = load_catalog("production").get("kimi-k2")
MINILM = load_catalog("demo").get("all-minilm-l6-v2")
PIN = {"CANDLE_TEST_PIN": "pinned-app-only"}
ON_HEAD = {NODE_CLASS: "cpu"}
CATALOG = {
    "models": [
        MINILM.model_dump() | {"name": "kimi-shaped", "resources": KIMI.resources.model_dump() | {"num_cpus": 0.25}},
        MINILM.model_dump()
        | {
            "name": "pinned-env",
            "runtime_env": {"env_vars": PIN},
            "resources": {"label_selector": {NODE_CLASS: "cpu"}},
        },
    ]
}
MOVING = "pins/moving"


@pytest.fixture(scope="module")
def wide(tiny_store: Path, hub_server: LocalHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimCluster]:
    cache_root = tmp_path_factory.mktemp("node-caches")
    env = {**TEST_ENV, **SERVE_ENV, "HF_ENDPOINT": hub_server.endpoint}
    with simulated_cluster(NODES, env, cache_root=cache_root) as (cluster, ids):
        yield SimCluster(cluster, ids, cache_root, hub_server)


def replica_view(replica: object) -> dict[str, str | None]:
    """Runs inside a replica (through ``__ray_call__``): its node, and its own view of the pin and of candle."""
    import candle.download
    import deployments.base

    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "pin": os.environ.get("CANDLE_TEST_PIN"),
        "candle": candle.download.__file__,
        "deployments": deployments.base.__file__,
    }


@pytest.fixture(scope="module")
def apps(wide: SimCluster) -> Iterator[dict[str, dict[str, str | None]]]:
    """Both apps deployed as serve_config.yaml deploys models, running (weights fetched, engines loaded):
    each one's :func:`replica_view`."""
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": free_port()})
    targets = [
        RunTarget(build_model_app({"catalog": CATALOG, "model": m["name"]}), name=m["name"], route_prefix=None)
        for m in CATALOG["models"]
    ]
    serve.run_many(targets)
    try:
        replicas = {  # Serve names them SERVE_REPLICA::<app>#<deployment>#<id>, in its namespace
            actor["name"].removeprefix("SERVE_REPLICA::").split("#")[0]: ray.get_actor(
                actor["name"], actor["namespace"]
            )
            for actor in ray.util.list_named_actors(all_namespaces=True)
            if actor["name"].startswith("SERVE_REPLICA::")
        }
        yield {app: ray.get(replica.__ray_call__.remote(replica_view)) for app, replica in replicas.items()}
    finally:
        for target in targets:
            serve.delete(target.name, _blocking=False)


def gpus_per_node(wide: SimCluster) -> Counter[str]:
    """GPUs of kimi-shaped's placement group (its replica's bundle and 16 ranks) per node, from Ray's table."""
    (group,) = [g for g in ray.util.placement_group_table().values() if len(g["bundles"]) == 1 + 16]
    assert group["state"] == "CREATED" and group["strategy"] == "PACK"
    gpus: Counter[str] = Counter()
    for index, bundle in group["bundles"].items():
        gpus[wide.names[group["bundles_to_node_id"][index]]] += bundle.get("GPU", 0)
    return gpus


def spanned_nodes(wide: SimCluster) -> list[str]:
    return sorted(node for node, count in gpus_per_node(wide).items() if count)


def test_a_model_bigger_than_a_node_takes_exactly_two_of_them(wide: SimCluster, apps: dict[str, dict[str, str | None]]):
    gpus, spanned = gpus_per_node(wide), spanned_nodes(wide)
    assert len(spanned) == 2 and set(spanned) <= set(EIGHTS), gpus
    assert [gpus[node] for node in spanned] == [8, 8]  # one pipeline stage (tensor parallel 8) per node
    assert wide.names[apps["kimi-shaped"]["node_id"]] in spanned  # the replica sits in bundle 0, beside its stage


def test_the_prefetch_job_warms_every_node_the_replica_may_span(
    wide: SimCluster, apps: dict[str, dict[str, str | None]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    # The replicas fetched onto their nodes: the head (pinned-env) and both nodes of kimi-shaped's group.
    assert {n for n in wide.node_ids if wide.snapshots(n, MINILM.repo_id)} == {"head", *spanned_nodes(wide)}
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(CATALOG))
    assert prefetch.main(["kimi-shaped", "--catalog", str(catalog)]) == 0
    (warming,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("kimi-shaped: warming")]
    assert set(warming.split(": ")[-1].split(", ")) == {wide.node_ids[n] for n in EIGHTS}, warming
    # Every 8-GPU node holds the same snapshot (PACK may pick any two), so the second stage's workers find it.
    snapshots = {node: [p.name for p in wide.snapshots(node, MINILM.repo_id)] for node in EIGHTS}
    assert len({tuple(s) for s in snapshots.values()}) == 1 and all(len(s) == 1 for s in snapshots.values())


def test_a_model_runtime_env_reaches_its_replica_only(apps: dict[str, dict[str, str | None]]):
    assert (apps["pinned-env"]["pin"], apps["kimi-shaped"]["pin"]) == (PIN["CANDLE_TEST_PIN"], None)
    root = str(Path(__file__).resolve().parents[2])  # this checkout's candle, also under the runtime_env
    assert all(view["candle"].startswith(root) and view["deployments"].startswith(root) for view in apps.values())


@ray.remote(num_cpus=0)
def fetch_here(repo_id: str) -> str:
    return str(asyncio.run(fetch(repo_id)))


def fetch_on(wide: SimCluster, node: str, repo_id: str) -> Path:
    pinned = NodeAffinitySchedulingStrategy(wide.node_ids[node], soft=False)
    return Path(ray.get(fetch_here.options(scheduling_strategy=pinned).remote(repo_id)))


def test_a_branch_moving_between_two_nodes_fetches_does_not_split_the_cluster(wide: SimCluster):
    write_repo(wide.hub.state.root, MOVING, {"config.json": b'{"v": 1}', "model.py": b"VERSION = 1\n"})
    first = fetch_on(wide, "eight-a", MOVING)
    moved = wide.hub.state.publish(MOVING, {"config.json": b'{"v": 2}', "model.py": b"VERSION = 2\n"})
    assert moved != first.name and HfApi(endpoint=wide.hub.endpoint).repo_info(MOVING).sha == moved
    second, third = fetch_on(wide, "eight-b", MOVING), fetch_on(wide, "head", MOVING)
    assert first.name == second.name == third.name  # the commit main had when the cluster first fetched it
    assert (second / "model.py").read_bytes() == (third / "model.py").read_bytes() == b"VERSION = 1\n"
