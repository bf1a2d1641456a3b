"""Catalog resources -> Ray Serve deployment options (GPUs, node labels, tensor-parallel bundles)."""

from __future__ import annotations

from typing import Any

from candle.catalog import ModelSpec

# Requests a replica queues before the gateway answers 503 + Retry-After instead of waiting.
MAX_QUEUED_REQUESTS = 64


def deployment_options(spec: ModelSpec) -> dict[str, Any]:
    """Options for ``Deployment.options``: where one replica of ``spec`` may run and how many there are.

    Tensor-parallel engines get one placement-group bundle per GPU rank, ``STRICT_PACK``ed onto one
    node (the replica's own bundle first, holding its CPUs); everything else asks for its GPUs on
    the replica actor. Node labels become a ``label_selector``, so multi-GPU pipelines land only on
    nodes labelled for them.
    """
    resources = spec.resources
    actor: dict[str, Any] = {"num_cpus": resources.num_cpus}
    if resources.memory_gb:
        actor["memory"] = int(resources.memory_gb * 1024**3)
    if resources.label_selector:
        actor["label_selector"] = dict(resources.label_selector)
    options: dict[str, Any] = {
        "num_replicas": spec.num_replicas,
        "max_ongoing_requests": spec.max_ongoing_requests,
        "max_queued_requests": MAX_QUEUED_REQUESTS,
        "ray_actor_options": actor,
    }
    if resources.tensor_parallel_size > 1:
        ranks = [{"GPU": 1.0, "CPU": 1.0}] * resources.tensor_parallel_size
        options["placement_group_bundles"] = [{"CPU": resources.num_cpus}, *ranks]
        options["placement_group_strategy"] = "STRICT_PACK"
    else:
        actor["num_gpus"] = resources.num_gpus
    return options
