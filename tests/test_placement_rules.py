"""Which nodes can host a model, Serve's word for replicas no node can take, and the prefetch job's plan.

Pure functions over data shaped like ``ray.nodes()`` and ``serve.status()``; the simulated-cluster
tests (tests/cluster/) check the same rules against real scheduling.
"""

from __future__ import annotations

import os

import pytest

from candle.catalog import Catalog, ModelSpec, Resources, load_catalog
from candle.jobs.prefetch import plan
from candle.placement import can_host, deployment_options, hosting_nodes, label_matches, replica_resources
from deployments.model_status import pending_reason
from deployments.replicas.base import hide_gpus_from_cpu_replicas
from tests.repo_files import CODE, OTHER_FORMATS, SAFETENSORS, selected

PRODUCTION = load_catalog("production")
CLASS = "candle.io/node-class"


def node(node_id: str, node_class: str | None, cpus: float, gpus: float = 0, alive: bool = True) -> dict:
    labels = {CLASS: node_class} if node_class else {}
    return {"NodeID": node_id, "Alive": alive, "Labels": labels, "Resources": {"CPU": cpus, "GPU": gpus}}


NODES = [
    node("head", "cpu", 16),
    node("gpu", "gpu", 16, 1),
    node("multi", "multi-gpu", 48, 4),
    node("multi-small", "multi-gpu", 48, 1),  # labelled for pipelines, but too few GPUs for one
    node("multi-dead", "multi-gpu", 48, 4, alive=False),
    node("eight", "gpu-8x", 192, 8),
]


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ({CLASS: "gpu"}, True),
        ({CLASS: "multi-gpu"}, False),
        ({CLASS: "!multi-gpu"}, True),
        ({CLASS: "!gpu"}, False),
        ({CLASS: "in(multi-gpu, gpu)"}, True),
        ({CLASS: "!in(multi-gpu, gpu)"}, False),
        ({"zone": "!eu"}, True),  # a node without the label is not in "eu"
        ({"zone": "eu"}, False),
        ({}, True),
    ],
)
def test_label_selectors_match_as_ray_does(selector, matches):
    assert label_matches(selector, {CLASS: "gpu"}) is matches


def test_replica_resources_follow_the_deployment_options():
    assert replica_resources(PRODUCTION.get("sd3.5-large-turbo")) == {"CPU": 4, "GPU": 2}
    assert replica_resources(PRODUCTION.get("kimi-k2")) == {"CPU": 24, "GPU": 16}  # its bundle + 16 ranks
    assert replica_resources(PRODUCTION.get("all-minilm-l6-v2")) == {"CPU": 2, "GPU": 0}


@pytest.mark.parametrize(
    ("model", "visible"),
    [
        ("all-minilm-l6-v2", ""),  # no GPU booked: the node's GPUs are hidden from torch
        ("sd3.5-large-turbo", "0,1"),  # GPUs on the replica actor: Ray's own setting stays
        ("kimi-k2", "0,1"),  # GPUs in the placement group's ranks: left for vLLM's workers
    ],
)
def test_replicas_that_book_no_gpu_stay_off_the_gpus(monkeypatch: pytest.MonkeyPatch, model: str, visible: str):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # what a replica inherits from a GPU node under Ray 2.60
    hide_gpus_from_cpu_replicas(PRODUCTION.get(model))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == visible


def test_tensor_parallel_bundles_carry_the_label_selector():
    options = deployment_options(PRODUCTION.get("qwen3-coder"))
    assert options["placement_group_bundle_label_selector"] == [{CLASS: "multi-gpu"}]
    assert "placement_group_bundle_label_selector" not in deployment_options(PRODUCTION.get("sd3.5-large-turbo"))


def test_pipeline_stages_pack_over_nodes_and_tensor_parallel_stays_on_one():
    kimi, qwen = deployment_options(PRODUCTION.get("kimi-k2")), deployment_options(PRODUCTION.get("qwen3-coder"))
    assert kimi["placement_group_bundles"] == [{"CPU": 8}, *[{"GPU": 1.0, "CPU": 1.0}] * 16]
    assert (kimi["placement_group_strategy"], qwen["placement_group_strategy"]) == ("PACK", "STRICT_PACK")
    assert kimi["placement_group_bundle_label_selector"] == [{CLASS: "gpu-8x"}]  # Serve applies it to every bundle


def test_parallel_engines_book_one_gpu_per_rank():
    with pytest.raises(ValueError, match=r"num_gpus \(8\) must be tensor_parallel_size x pipeline_parallel_size"):
        Resources(num_gpus=8, tensor_parallel_size=8, pipeline_parallel_size=2)


def test_every_node_a_pipeline_stage_may_land_on_hosts_the_model():
    eights = [node("eight", "gpu-8x", 192, 8), node("eight-b", "gpu-8x", 192, 8), node("eight-1", "gpu-8x", 2, 1)]
    kimi = PRODUCTION.get("kimi-k2")
    # PACK may put any number of its one-GPU rank bundles on a node: every labelled node with a GPU takes part.
    assert hosting_nodes(kimi, [*NODES, *eights[1:]]) == ["eight", "eight-b", "eight-1"]
    (target,) = plan([kimi.name], PRODUCTION, [*NODES, *eights[1:]])
    assert target.node_ids == ("eight", "eight-b", "eight-1")


def test_hosting_nodes_need_labels_gpus_and_life():
    assert hosting_nodes(PRODUCTION.get("sd3.5-large-turbo"), NODES) == ["multi"]
    assert hosting_nodes(PRODUCTION.get("kimi-k2"), NODES) == ["eight"]
    assert hosting_nodes(PRODUCTION.get("phi-4-reasoning"), NODES) == ["gpu"]
    assert hosting_nodes(PRODUCTION.get("all-minilm-l6-v2"), NODES) == ["head", "gpu", "multi", "multi-small", "eight"]
    assert not can_host(PRODUCTION.get("all-minilm-l6-v2"), node("tiny", "cpu", 1))  # 2 CPUs a replica


def test_prefetch_plan_warms_where_replicas_can_land():
    sd3, minilm = PRODUCTION.get("sd3.5-large-turbo"), PRODUCTION.get("all-minilm-l6-v2")
    placed, plain, everywhere = plan([sd3.name, "someone/some-model", minilm.name], PRODUCTION, NODES)
    assert (placed.node_ids, placed.request.repo_id) == (("multi",), sd3.repo_id)
    assert placed.request.ignore_patterns == sd3.ignore_patterns
    assert (plain.request.repo_id, plain.request.allow_patterns) == ("someone/some-model", None)
    alive = ("head", "gpu", "multi", "multi-small", "eight")
    assert plain.node_ids == everywhere.node_ids == alive
    (forced,) = plan([sd3.name], PRODUCTION, NODES, all_nodes=True)
    assert forced.node_ids == alive


def test_prefetch_plan_refuses_a_model_no_node_can_host():
    with pytest.raises(ValueError, match="kimi-k2: no alive node can host a replica"):
        plan(["kimi-k2"], PRODUCTION, NODES[:3])


@pytest.mark.parametrize("allow_patterns", [None, ("*.json", "*.safetensors")])
def test_remote_code_models_prefetch_their_code(allow_patterns: tuple[str, ...] | None):
    spec = PRODUCTION.get("nv-embed-v2").model_copy(update={"allow_patterns": allow_patterns})
    (target,) = plan([spec.name], Catalog(models=(spec,)), NODES)
    kept = selected(target.request.allow_patterns, target.request.ignore_patterns)
    assert set(CODE) <= kept and set(SAFETENSORS) <= kept
    assert not kept & set(OTHER_FORMATS)  # the weights in one format, as the replica fetches them


# What Serve 2.60 puts in a deployment's message once a replica has waited for a node (verbatim).
UNSCHEDULED = (
    "Deployment 'TextEmbedding' in application 'too-big' has 1 replicas that have taken more than 30s to be "
    "scheduled. This may be due to waiting for the cluster to auto-scale or for a runtime environment to be "
    'installed. Resources required for each replica: {"CPU": 0.25, "GPU": 16}, total resources available: '
    '{"CPU": 6.0, "GPU": 5.0}. Use `ray status` for more details.'
)
SLOW_INIT = (
    "Deployment 'TextEmbedding' in application 'x' has 1 replicas that have taken more than 30s to initialize.\n"
    "This may be caused by a slow __init__ or reconfigure method."
)


def test_pending_reason_names_what_a_replica_waits_for():
    spec = ModelSpec(name="big", capability="text-embedding", repo_id="a/b", resources={"num_gpus": 16})
    assert pending_reason(UNSCHEDULED, spec) == (
        '1 replica(s) waiting over 30s for a node with {"CPU": 0.25, "GPU": 16} '
        '(free across the cluster: {"CPU": 6.0, "GPU": 5.0})'
    )
    # Placement-group deployments: Serve lists the bundles and filters "available" down to nothing.
    required = '{"CPU": 0.25, "GPU": 16}, total resources available: {"CPU": 6.0, "GPU": 5.0}'
    bundles = UNSCHEDULED.replace(required, '[{"CPU": 8}, {"GPU": 1, "CPU": 1}], total resources available: {}')
    reason = pending_reason(bundles, PRODUCTION.get("kimi-k2"))
    assert reason.endswith('gpu-8x with [{"CPU": 8}, {"GPU": 1, "CPU": 1}] (free across the cluster: {})')
    labelled = PRODUCTION.get("sd3.5-large-turbo")
    assert "for a node labelled candle.io/node-class=multi-gpu with" in pending_reason(UNSCHEDULED, labelled)
    assert pending_reason(SLOW_INIT, spec) is None  # a slow constructor (downloading) is not pending
    assert pending_reason("", spec) is None
