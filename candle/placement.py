"""Catalog resources -> Ray Serve deployment options, and which nodes of a cluster can host a model.

Both answers come from the same options, so what the prefetch job warms, what the cluster configs
are checked against, and where Serve really schedules a replica cannot disagree.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from candle.catalog import Deployable
from candle.download.config import MODEL_RUNTIME_ENV_VAR

# A node as ``ray.nodes()`` describes it: "NodeID", "Alive", "Labels", "Resources" (totals).
NodeInfo = Mapping[str, Any]

_IN = re.compile(r"^in\((?P<values>.*)\)$")
# One vLLM worker: vLLM's Ray executor starts one per bundle that holds a GPU.
RANK_BUNDLE = {"GPU": 1.0, "CPU": 1.0}


def deployment_options(spec: Deployable) -> dict[str, Any]:
    """Options for ``Deployment.options``: where one replica of ``spec`` (a model's own deployment or a
    pool's) may run and how many there are.

    Tensor-parallel engines get one placement-group bundle per GPU rank, ``STRICT_PACK``ed onto one
    node (the replica's own bundle first, holding its CPUs); with pipeline parallelism the ranks of
    all stages (tensor x pipeline) are ``PACK``ed instead, so they fill as few nodes as they fit on
    and a replica can span nodes, as Ray Serve LLM places cross-node engines. Everything else asks
    for its GPUs on the replica actor. Node labels become a ``label_selector``, so multi-GPU pipelines land only on
    nodes labelled for them; with a placement group the bundles carry the selector too, because the
    group is reserved before the replica and an actor selector alone cannot move it.
    """
    resources = spec.resources
    actor: dict[str, Any] = {"num_cpus": resources.num_cpus}
    if resources.memory_gb:
        actor["memory"] = int(resources.memory_gb * 1024**3)
    if resources.label_selector:
        actor["label_selector"] = dict(resources.label_selector)
    if spec.runtime_env:  # serve_config.py sets it on the model's application too
        # Marked, so the replica leaves node-wide actors to the base env (candle/download/cluster/factory.py).
        env_vars = {**spec.runtime_env.get("env_vars", {}), MODEL_RUNTIME_ENV_VAR: spec.name}
        actor["runtime_env"] = {**spec.runtime_env, "env_vars": env_vars}
    options: dict[str, Any] = {
        **replica_count(spec),
        "max_ongoing_requests": spec.max_ongoing_requests,
        "max_queued_requests": max_queued_requests(spec),
        # Past the queue the gateway (and Serve, at a chat model's own URL) answers 503 with this
        # Retry-After: by then the queue has drained.
        "backpressure_config": {"retry_after_s": spec.queue_budget()[0]},
        "ray_actor_options": actor,
    }
    if resources.ranks > 1:
        options["placement_group_bundles"] = [{"CPU": resources.num_cpus}, *[RANK_BUNDLE] * resources.ranks]
        options["placement_group_strategy"] = "PACK" if resources.pipeline_parallel_size > 1 else "STRICT_PACK"
        if resources.label_selector:
            options["placement_group_bundle_label_selector"] = [dict(resources.label_selector)]
    else:
        actor["num_gpus"] = resources.num_gpus
    return options


def replica_count(spec: Deployable) -> dict[str, Any]:
    """``num_replicas``, or Serve's ``autoscaling_config`` for an entry that autoscales.

    An autoscaled deployment still starts with a replica even when ``min_replicas`` is 0: it fetches
    the weights into the node's cache at deploy time, so a later start from zero reads them locally.
    Serve skips ``upscale_delay_s`` when it scales up from zero.
    """
    scaling = spec.autoscaling
    if scaling is None:
        return {"num_replicas": spec.num_replicas}
    return {"autoscaling_config": {**scaling.model_dump(), "initial_replicas": max(scaling.min_replicas, 1)}}


def max_queued_requests(spec: Deployable) -> int:
    """Requests each caller (each gateway replica) queues for ``spec`` before answering 503.

    When every slot is busy the deployment finishes ``max_ongoing_requests x num_replicas`` requests
    per ``request_time_s``, so the last of ``Q`` queued requests waits about
    ``Q x request_time_s / (max_ongoing_requests x num_replicas)``. Holding that to the latency budget:

        Q = ceil(queue_latency_budget_s / request_time_s x max_ongoing_requests x num_replicas)

    Serve keeps this queue per caller: with G gateway replicas up to G x Q requests wait in all. An
    autoscaled deployment counts the replicas it always has (at least one: a cold start's queue).
    """
    budget_s, request_time_s = spec.queue_budget()
    replicas = max(spec.autoscaling.min_replicas, 1) if spec.autoscaling else spec.num_replicas
    slots = spec.max_ongoing_requests * replicas
    return max(1, math.ceil(budget_s / request_time_s * slots))


def replica_resources(spec: Deployable) -> dict[str, float]:
    """CPUs and GPUs one replica takes (a placement group takes the sum of its bundles)."""
    options = deployment_options(spec)
    actor = options["ray_actor_options"]
    bundles = options.get("placement_group_bundles") or [{"CPU": actor["num_cpus"], "GPU": actor["num_gpus"]}]
    return {key: float(sum(b.get(key, 0) for b in bundles)) for key in ("CPU", "GPU")}


def label_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Ray's label selector semantics: ``value``, ``!value``, ``in(a, b)`` and ``!in(a, b)`` per key."""
    for key, condition in selector.items():
        negated = condition.startswith("!")
        condition = condition.removeprefix("!")
        listed = _IN.match(condition)
        allowed = {v.strip() for v in listed["values"].split(",")} if listed else {condition}
        if (labels.get(key) in allowed) == negated:
            return False
    return True


def node_share(spec: Deployable) -> dict[str, float]:
    """The least a node must have to hold part of a replica: all of it, or, when its pipeline stages
    may span nodes, one rank's bundle (``PACK`` may put any number of them on a node)."""
    return dict(RANK_BUNDLE) if spec.resources.pipeline_parallel_size > 1 else replica_resources(spec)


def can_host(spec: Deployable, node: NodeInfo) -> bool:
    """Whether (part of) a replica of ``spec`` could ever run on ``node``: its labels match, it has the
    CPUs and GPUs of :func:`node_share`. Those are the nodes a replica's weights must be on."""
    if not node.get("Alive", True) or not label_matches(spec.resources.label_selector, node.get("Labels") or {}):
        return False
    capacity = node.get("Resources") or {}
    return all(float(capacity.get(key, 0)) >= need for key, need in node_share(spec).items() if need)


def hosting_nodes(spec: Deployable, nodes: Iterable[NodeInfo]) -> list[str]:
    """Ids of the alive nodes where ``spec``'s deployment (or part of one replica) can land."""
    return [node["NodeID"] for node in nodes if can_host(spec, node)]
