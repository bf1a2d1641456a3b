"""A model bigger than a node, a model with libraries of its own, and one commit per branch, on a
simulated cluster of three 8-GPU nodes (fake GPUs, labelled ``gpu-8x``) and a CPU head.

The tiny MiniLM runs with Kimi K2's production placement (tensor parallel 8, pipeline parallel 2):
its placement group must take exactly two of the three 8-GPU nodes, its replica must bring the
weights onto both, and the prefetch job must warm every node its bundles may land on. A second
MiniLM app carries a ``runtime_env`` (an environment variable and a pip pin) that only its own
replica sees, not the node's downloader it brings up. NV-Embed-v2's look-alike serves under the
production entry's own ``runtime_env`` (transformers 4.42.4 and the huggingface_hub 0.36 it brings),
fetching through a base-env downloader too. Then a branch moves on the hub between two nodes' fetches.
"""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import httpx
import numpy as np
import pytest
import ray
import yaml
from huggingface_hub import HfApi
from ray import serve
from ray.serve.api import RunTarget
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from sentence_transformers import SentenceTransformer

from candle.catalog import load_catalog
from candle.demo.hub import LocalHub, write_repo
from candle.demo.tiny_models import build_tiny_store
from candle.download import fetch
from candle.download.client import NAMESPACE, downloader_name
from candle.jobs import prefetch
from candle.testing import free_port
from candle.testing.cluster import NODE_CLASS, NodeSpec, simulated_cluster
from deployments.app import build_gateway_app, build_model_app
from tests.cluster.conftest import SERVE_ENV, SimCluster
from tests.cluster.env_probes import env_view, replica_view
from tests.conftest import TEST_ENV
from tests.replica_threads import replica_threads

NODES = (
    NodeSpec("head", num_cpus=3, labels={NODE_CLASS: "cpu"}),
    *(NodeSpec(f"eight-{n}", num_cpus=9, num_gpus=8, labels={NODE_CLASS: "gpu-8x"}) for n in "abc"),
)
EIGHTS = ["eight-a", "eight-b", "eight-c"]
KIMI = load_catalog("production").get("kimi-k2")
MINILM = load_catalog("demo").get("all-minilm-l6-v2")
NV_EMBED = load_catalog("production").get("nv-embed-v2")
NV_LOOKALIKE = load_catalog("demo-all").get("nv-embed-v2")
PIN = {"CANDLE_TEST_PIN": "pinned-app-only"}
# A small pure-Python package at a version the base env does not have, which nothing candle runs imports.
PIP_PIN = "bidict==0.23.1"
ON_HEAD = {NODE_CLASS: "cpu"}
CATALOG = {
    "models": [
        MINILM.model_dump() | {"name": "kimi-shaped", "resources": KIMI.resources.model_dump() | {"num_cpus": 0.25}},
        MINILM.model_dump()
        | {
            "name": "pinned-env",
            "runtime_env": {"env_vars": PIN, "pip": [PIP_PIN]},
            "resources": {"label_selector": {NODE_CLASS: "cpu"}},
        },
        NV_LOOKALIKE.model_dump()
        | {
            "runtime_env": NV_EMBED.runtime_env,  # production's pins, on the look-alike
            "resources": NV_LOOKALIKE.resources.model_dump() | {"label_selector": ON_HEAD},
        },
    ]
}
MOVING = "pins/moving"
TEXT = "a cat sits on the mat"


@pytest.fixture(scope="module")
def wide(tiny_store: Path, hub_server: LocalHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimCluster]:
    build_tiny_store(tiny_store, ["nv_embed"])
    cache_root = tmp_path_factory.mktemp("node-caches")
    env = {**TEST_ENV, **SERVE_ENV, "HF_ENDPOINT": hub_server.endpoint}
    with simulated_cluster(NODES, env, cache_root=cache_root) as (cluster, ids):
        session = Path(cluster.head_node.get_session_dir_path())
        yield SimCluster(cluster, ids, cache_root, hub_server)
    # Each pip runtime_env is a copy of the whole base virtualenv (about 3 GB here), which Ray leaves
    # in the session folder after shutdown.
    shutil.rmtree(session / "runtime_resources", ignore_errors=True)


@pytest.fixture(scope="module")
def gateway(wide: SimCluster) -> str:
    port = free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def apps(gateway: str) -> Iterator[dict[str, dict[str, str | None]]]:
    """Both apps and the gateway deployed as serve_config.yaml deploys them, running (weights fetched,
    engines loaded): each model's :func:`replica_view`."""
    targets = [
        RunTarget(build_model_app({"catalog": CATALOG, "model": m["name"]}), name=m["name"], route_prefix=None)
        for m in CATALOG["models"]
    ]
    targets.append(RunTarget(build_gateway_app({"catalog": CATALOG}), name="gateway"))
    serve.run_many(targets)
    try:
        replicas = {  # Serve names them SERVE_REPLICA::<app>#<deployment>#<id>, in its namespace
            actor["name"].removeprefix("SERVE_REPLICA::").split("#")[0]: ray.get_actor(
                actor["name"], actor["namespace"]
            )
            for actor in ray.util.list_named_actors(all_namespaces=True)
            if actor["name"].startswith("SERVE_REPLICA::")
        }
        del replicas["gateway"]
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
    assert (apps["pinned-env"]["bidict"], apps["kimi-shaped"]["bidict"]) == ("0.23.1", version("bidict"))
    root = str(Path(__file__).resolve().parents[2])  # this checkout's candle, also under the runtime_env
    assert all(view["candle"].startswith(root) and view["deployments"].startswith(root) for view in apps.values())


def test_a_model_with_its_own_libraries_serves_through_the_gateway(gateway: str, apps: dict[str, object]):
    body = {"model": "pinned-env", "input": ["a cat sits on the mat", "a kitten rests on a rug"]}
    response = httpx.post(f"{gateway}/v1/embeddings", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert [len(item["embedding"]) for item in response.json()["data"]] == [384, 384]


def downloader_view(node_id: str) -> dict[str, str | None]:
    downloader = ray.get_actor(downloader_name(node_id), namespace=NAMESPACE)
    return ray.get(downloader.__ray_call__.remote(env_view))


def test_the_downloader_a_pinned_replica_brings_up_runs_in_the_base_env(apps: dict[str, dict[str, str | None]]):
    # Nothing else fetches on the head: its downloader was brought up for one of the two pinned replicas
    # there (bidict's pin, or NV-Embed's transformers 4.42.4 with the old huggingface_hub it brings).
    assert apps["pinned-env"]["node_id"] == apps[NV_LOOKALIKE.name]["node_id"]
    view = downloader_view(apps["pinned-env"]["node_id"])
    libraries = ("bidict", "huggingface_hub", "transformers")
    assert (view["pin"], *(view[name] for name in libraries)) == (None, *(version(name) for name in libraries))


def test_nv_embed_serves_under_its_production_pins_with_the_base_envs_vectors(
    gateway: str, hub_store: Path, apps: dict[str, dict[str, str | None]]
):
    pins = dict(pin.split("==") for pin in NV_EMBED.runtime_env["pip"])
    view = apps[NV_LOOKALIKE.name]
    assert (view["transformers"], view["sentence_transformers"]) == (
        pins["transformers"],
        pins["sentence-transformers"],
    )
    assert view["transformers"] != version("transformers") and view["huggingface_hub"] != version("huggingface_hub")
    body = {"model": NV_LOOKALIKE.name, "input": [TEXT], "input_type": "query"}
    response = httpx.post(f"{gateway}/v1/embeddings", json=body, timeout=60)
    assert response.status_code == 200, response.text
    model = SentenceTransformer(str(hub_store / NV_LOOKALIKE.repo_id), trust_remote_code=True)
    query = NV_LOOKALIKE.prompts["query"] + TEXT + model.tokenizer.eos_token  # the entry's append_eos
    with replica_threads():
        expected = model.encode([query], normalize_embeddings=True)[0]
    np.testing.assert_allclose(response.json()["data"][0]["embedding"], expected, atol=1e-4)


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
