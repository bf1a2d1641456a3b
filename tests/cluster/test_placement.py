"""Placement: the catalog's GPUs and node labels decide where replicas land, here and in cluster/.

The cluster configs are checked against the production catalog (every model fits a node group of
each), then real Serve apps run on a simulated cluster with fake GPUs: the tiny SD3 and FLUX
pipelines with the production placement of SD3.5/FLUX (2 GPUs on a ``multi-gpu`` node), MiniLM
with no GPU, and a model asking for 16 GPUs, which no node has.
"""

from __future__ import annotations

import base64
import copy
import io
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
import yaml
from PIL import Image
from ray import serve
from ray._private.label_utils import validate_node_label_syntax
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve.api import RunTarget
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from ray.util.state import list_actors
from ray.util.state.common import ActorState

from candle.catalog import ModelSpec, load_catalog
from candle.demo.tiny_models import TINY_MODELS
from candle.placement import NodeInfo, hosting_nodes
from candle.serve_config import GATEWAY_REPLICAS
from candle.testing import free_port, wait_for_models
from candle.testing.cluster import NODE_CLASS, node_hub_cache
from deployments.app import build_gateway_app, build_model_app
from tests.cluster.conftest import NODES, SimCluster

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = load_catalog("production")
DEMO = load_catalog("demo")
WORKER_GROUPS = {"gpu": 1, "multi-gpu": 4, "gpu-8x": 8}  # node class -> GPUs per node
SECRETS = ("HF_TOKEN", "CANDLE_API_KEYS")
FAST_PATH = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}  # docs/serving.md
READY_TIMEOUT_S = 180


def load(path: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / path).read_text())


# -- the cluster configs and the catalog -------------------------------------------------------


def as_node(name: str, labels: dict[str, str], resources: dict[str, Any]) -> NodeInfo:
    """A node group described as ``ray.nodes()`` would describe one of its nodes."""
    return {"NodeID": name, "Alive": True, "Labels": labels, "Resources": {k: float(v) for k, v in resources.items()}}


def kuberay_worker_groups() -> list[dict[str, Any]]:
    return load("cluster/kuberay-rayservice.yaml")["spec"]["rayClusterConfig"]["workerGroupSpecs"]


def kuberay_groups() -> dict[str, NodeInfo]:
    """The RayService's groups: labels from each group's ``labels`` (KubeRay >= 1.5 passes them to
    ``ray start --labels`` and rejects them in ``rayStartParams``), resources from ``rayStartParams``."""
    cluster = load("cluster/kuberay-rayservice.yaml")["spec"]["rayClusterConfig"]
    groups = {"head": cluster["headGroupSpec"], **{g["groupName"]: g for g in cluster["workerGroupSpecs"]}}
    nodes = {}
    for name, group in groups.items():
        params = group["rayStartParams"]
        assert "labels" not in params, name
        validate_node_label_syntax(group["labels"])  # what `ray start --labels` checks
        nodes[name] = as_node(name, group["labels"], {"CPU": params["num-cpus"], "GPU": params.get("num-gpus", 0)})
    return nodes


def launcher_types() -> dict[str, NodeInfo]:
    types = load("cluster/ray-cluster.yaml")["available_node_types"]
    return {name: as_node(name, t.get("labels", {}), t["resources"]) for name, t in types.items()}


@pytest.mark.parametrize("groups", [kuberay_groups, launcher_types], ids=["kuberay", "launcher"])
def test_every_production_model_fits_a_node_group_of_each_config(groups):
    nodes = groups()
    assert {name: (n["Labels"].get(NODE_CLASS), n["Resources"]["GPU"]) for name, n in nodes.items()} == {
        "head": ("cpu", 0),
        **{name: (name, gpus) for name, gpus in WORKER_GROUPS.items()},
    }
    homes = {spec.name: hosting_nodes(spec, nodes.values()) for spec in PRODUCTION.models}
    assert all(homes.values()), {name: home for name, home in homes.items() if not home}
    assert homes["kimi-k2"] == ["gpu-8x"]  # tensor parallel 8 on each of two 8-GPU nodes
    assert homes["sd3.5-large-turbo"] == homes["flux.1-schnell"] == ["multi-gpu"]


@pytest.mark.parametrize(
    ("groups", "sizes"),
    [
        (kuberay_groups, lambda: {g["groupName"]: g["minReplicas"] for g in kuberay_worker_groups()}),
        (
            launcher_types,
            lambda: {
                n: t["min_workers"]
                for n, t in load("cluster/ray-cluster.yaml")["available_node_types"].items()
                if n != "head"
            },
        ),
    ],
    ids=["kuberay", "launcher"],
)
def test_a_model_spanning_nodes_has_enough_nodes_of_its_group(groups, sizes):
    nodes, count = groups(), sizes()
    for spec in PRODUCTION.models:
        if spec.resources.pipeline_parallel_size == 1:
            continue
        home = hosting_nodes(spec, nodes.values())
        # One pipeline stage (its tensor-parallel ranks) per node, on nodes that are always there.
        stages = sum(count[g] * (nodes[g]["Resources"]["GPU"] // spec.resources.tensor_parallel_size) for g in home)
        assert stages >= spec.resources.pipeline_parallel_size, (spec.name, home, count)


def test_rayservice_serves_serve_config_yaml():
    service = load("cluster/kuberay-rayservice.yaml")
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    served = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert served["applications"] == load("serve_config.yaml")["applications"]
    assert served == load("serve_config.yaml")


def test_rayservice_pods_take_gpus_secrets_and_a_cache_volume():
    cluster = load("cluster/kuberay-rayservice.yaml")["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    gpus = {g.get("groupName", "head"): g["template"]["spec"]["containers"][0]["resources"] for g in groups}
    assert {name: r["limits"].get("nvidia.com/gpu", 0) for name, r in gpus.items()} == {"head": 0, **WORKER_GROUPS}
    for group in groups:
        pod = group["template"]["spec"]
        container = pod["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        for name in SECRETS:
            assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["name"], name
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volume = mounts[env["HF_HOME"]["value"]]
        assert volume in {v["name"] for v in pod["volumes"]}
        assert {name: env[name]["value"] for name in FAST_PATH} == FAST_PATH, group.get("groupName", "head")


def test_launcher_config_is_valid_and_keeps_secrets_out():
    config = load("cluster/ray-cluster.yaml")
    validate_config(prepare_config(copy.deepcopy(config)))  # Ray 2.60's own schema and checks
    text = (ROOT / "cluster/ray-cluster.yaml").read_text()
    assert not re.search(r"hf_[A-Za-z0-9]{20,}", text)
    assert all(f"{name}=%q" in text for name in SECRETS)  # read at start, from the secrets manager


@pytest.mark.parametrize("start", ["head_start_ray_commands", "worker_start_ray_commands"])
def test_launcher_nodes_start_ray_with_the_secrets_and_serves_fast_path(start: str, tmp_path: Path):
    """The node's start commands up to ``ray start``, run in bash with an ``aws`` that answers every
    secret with "s3cret": the environment ``ray start`` gets."""
    commands = load("cluster/ray-cluster.yaml")[start]
    ray_start = next(i for i, c in enumerate(commands) if "ray start" in c)
    script = "\n".join([*commands[1:ray_start], commands[ray_start].split("ray start")[0] + "env"])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "aws").write_text("#!/bin/sh\necho s3cret\n")
    (bin_dir / "aws").chmod(0o755)
    environ = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run(["bash", "-c", script], env=environ, capture_output=True, text=True, check=True).stdout
    seen = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert {name: seen.get(name) for name in SECRETS} == dict.fromkeys(SECRETS, "s3cret")
    assert {name: seen.get(name) for name in FAST_PATH} == FAST_PATH
    assert (tmp_path / ".candle-env").stat().st_mode & 0o077 == 0  # the secrets' file: its owner's only


# -- the simulated cluster -------------------------------------------------------------------


@ray.remote(num_cpus=0)
def node_view() -> dict[str, Any]:
    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "labels": ray.get_runtime_context().get_node_labels(),
        "HF_HUB_CACHE": os.environ.get("HF_HUB_CACHE"),
        "HF_ENDPOINT": os.environ.get("HF_ENDPOINT"),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def test_simulated_nodes_have_their_own_labels_caches_and_gpus(sim: SimCluster):
    for node in NODES:
        pinned = NodeAffinitySchedulingStrategy(sim.node_ids[node.name], soft=False)
        seen = ray.get(node_view.options(scheduling_strategy=pinned).remote())
        assert seen["labels"][NODE_CLASS] == node.labels[NODE_CLASS]
        assert seen["HF_HUB_CACHE"] == str(node_hub_cache(sim.cache_root, node.name))
        assert seen["HF_ENDPOINT"] == sim.hub.endpoint
    two = ray.get(node_view.options(num_gpus=2, label_selector={NODE_CLASS: "multi-gpu"}).remote())
    assert two["node_id"] == sim.node_ids["multi-gpu"]
    assert len(two["CUDA_VISIBLE_DEVICES"].split(",")) == 2


def placed_like(spec: ModelSpec, production: str, **fields: Any) -> dict[str, Any]:
    """``spec`` (a tiny model) with the production placement of ``production``, on a small CPU share."""
    resources = PRODUCTION.get(production).resources.model_dump() | {"num_cpus": 0.25}
    return spec.model_dump() | fields | {"resources": resources}


SD3 = DEMO.get("sd3.5-turbo-tiny")
MINILM = DEMO.get("all-minilm-l6-v2")
CATALOG = {
    "models": [
        placed_like(SD3, "sd3.5-large-turbo"),
        placed_like(
            SD3,
            "flux.1-schnell",
            name="flux.1-schnell-tiny",
            repo_id=TINY_MODELS["flux"],
            defaults=PRODUCTION.get("flux.1-schnell").defaults | {"size": 64},
        ),
        MINILM.model_dump(),
        MINILM.model_dump() | {"name": "too-big", "resources": {"num_cpus": 0.25, "num_gpus": 16}},
    ]
}
FLUX = CATALOG["models"][1]["name"]
EXPECTED = {SD3.name: "ready", FLUX: "ready", MINILM.name: "ready", "too-big": "pending"}


def model_cards(base: str) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in httpx.get(f"{base}/v1/models", timeout=10).json()["data"]}


@pytest.fixture(scope="module")
def gateway(sim: SimCluster) -> Iterator[str]:
    """The catalog above deployed as in serve_config.yaml (one app per model, the gateway at '/')."""
    port = free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    apps = [
        RunTarget(build_model_app({"catalog": CATALOG, "model": m["name"]}), name=m["name"], route_prefix=None)
        for m in CATALOG["models"]
    ]
    gateway_args = {"catalog": CATALOG, "num_replicas": GATEWAY_REPLICAS}
    apps.append(RunTarget(build_gateway_app(gateway_args), name="gateway"))
    serve.run_many(apps, wait_for_applications_running=False)
    base = f"http://127.0.0.1:{port}"
    try:
        assert set(wait_for_models(base, EXPECTED, READY_TIMEOUT_S)) == set(EXPECTED)
        yield base
    finally:
        # Without waiting: Serve gives the never-scheduled replica its 20 s grace period before killing it.
        for app in apps:
            serve.delete(app.name, _blocking=False)


def replica_actors(sim: SimCluster) -> dict[str, list[ActorState]]:
    """App name -> its replica actors (not dead), from Ray's state API."""
    actors = list_actors(address=sim.cluster.address, filters=[("state", "!=", "DEAD")], detail=True, limit=1000)
    by_app: dict[str, list[ActorState]] = {}
    for actor in actors:
        if actor.class_name.startswith("ServeReplica:"):
            by_app.setdefault(actor.class_name.split(":")[1], []).append(actor)
    return by_app


def test_replicas_land_where_their_gpus_and_labels_allow(sim: SimCluster, gateway: str):
    actors = replica_actors(sim)
    assert len(actors.pop("gateway")) == GATEWAY_REPLICAS  # as serve_config.yaml deploys it
    replicas = {app: only for app, (only,) in actors.items()}
    where = {app: sim.names.get(actor.node_id) for app, actor in replicas.items()}
    gpus = {app: actor.required_resources.get("GPU", 0) for app, actor in replicas.items()}
    assert gpus == {SD3.name: 2, FLUX: 2, MINILM.name: 0, "too-big": 16}
    # Labelled pipelines on the multi-GPU node, the 16-GPU model nowhere, MiniLM wherever a CPU is free.
    assert {app: where[app] for app in (SD3.name, FLUX, "too-big")} == {
        SD3.name: "multi-gpu",
        FLUX: "multi-gpu",
        "too-big": None,
    }
    assert where[MINILM.name] in sim.node_ids and replicas["too-big"].state == "PENDING_CREATION"
    # Each replica fetched its weights into its own node's cache, and only there.
    holders = {
        spec["repo_id"]: [node.name for node in NODES if sim.snapshots(node.name, spec["repo_id"])]
        for spec in CATALOG["models"][:3]
    }
    assert holders == {
        SD3.repo_id: ["multi-gpu"],
        TINY_MODELS["flux"]: ["multi-gpu"],
        MINILM.repo_id: [where[MINILM.name]],
    }


@pytest.mark.parametrize("model", [SD3.name, FLUX])
def test_pipelines_placed_on_fake_gpus_generate_on_cpu(gateway: str, model: str):
    body = {"model": model, "prompt": "a red apple", "size": "64x64", "seed": 1}
    response = httpx.post(f"{gateway}/v1/images/generations", json=body, timeout=120)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"])))
    assert image.size == (64, 64)


def test_a_model_no_node_can_take_is_pending_with_the_reason(gateway: str):
    status = model_cards(gateway)["too-big"]["status"]
    assert status["state"] == "pending"
    assert re.search(r'"GPU": 16\b', status["reason"]), status["reason"]
    refused = httpx.post(f"{gateway}/v1/embeddings", json={"model": "too-big", "input": "hello"}, timeout=30)
    assert refused.status_code == 503 and refused.headers["Retry-After"]
    error = refused.json()["error"]
    assert error["code"] == "model_not_ready" and error["model_status"]["state"] == "pending"
    assert "GPU" in error["message"]
