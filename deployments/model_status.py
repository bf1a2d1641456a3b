"""Where each model stands, for ``/v1/models`` and for refusing requests to models not ready yet.

Combines Ray Serve's view (are replicas running, did the constructor fail and why) with the
download actors' progress (bytes, rate, ETA per node): a model whose replicas are still starting
is "downloading" while its weights are in flight and "loading" once they are on disk, and
"pending" when no node can take a replica (not enough GPUs, no node with its labels), which Serve
says in the deployment's message once a replica has waited ``RAY_SERVE_SLOW_STARTUP_WARNING_S``
(30 s by default) to be scheduled. A model whose autoscaling allows zero replicas and has none,
not even one starting, is "idle": a request wakes it.

A pooled model lives in its pool's deployment: while the pool has running replicas, its state is
what their records say (``pool_records``): "ready" where one holds it (with where), "downloading" or
"loading" while one loads it, "failed" with the reason when its last load failed, else "idle"
(loaded nowhere: a request loads it).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace

from ray import serve
from ray.serve.schema import DeploymentStatusOverview, ReplicaState

from candle.api.models import ModelStatus
from candle.catalog import ModelSpec
from candle.download.cluster.status import cluster_progress, model_progress
from candle.download.records import RepoProgressRecord

from . import pool_records
from .routing import deployment_of

# Serve 2.60's message for replicas still waiting for a node (``DeploymentState``'s startup check);
# "required" is a dict, or a list of bundles for placement-group deployments; "available" is what
# is free across the cluster now.
_UNSCHEDULED = re.compile(
    r"has (?P<count>\d+) replicas that have taken more than (?P<seconds>\d+)s to be scheduled\..*?"
    r"Resources required for each replica: (?P<required>\[.*?\]|\{.*?\}|\w+), "
    r"total resources available: (?P<available>\{.*?\}|\w+)",
    re.DOTALL,
)


def _last_line(message: str) -> str:
    """Serve reports constructor failures with a traceback; the last line names the error."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return lines[-1] if lines else message


def _idle(spec: ModelSpec, status: str, replica_states: dict[ReplicaState, int]) -> bool:
    """Scaled to zero: no replica running or on its way (all ``STOPPING``, or none), and not while a
    (re)deploy is ``UPDATING``, which has no replica yet for a moment before it starts its first."""
    live = sum(count for state, count in replica_states.items() if state != ReplicaState.STOPPING)
    return spec.scales_to_zero() and status != "UPDATING" and not live


def pending_reason(message: str, spec: ModelSpec) -> str | None:
    """Why replicas wait for a node, from Serve's message; None when they are not waiting for one.

    Serve's resource dict leaves out the label selector, so the spec's labels are added: "needs a
    GPU" on a cluster with idle GPUs is otherwise a puzzle.
    """
    if "to be scheduled" not in message:
        return None
    match = _UNSCHEDULED.search(message)
    if match is None:  # wording changed: Serve's own words beat none
        return _last_line(message)
    labels = spec.resources.label_selector
    where = f" labelled {', '.join(f'{k}={v}' for k, v in labels.items())}" if labels else ""
    return (
        f"{match['count']} replica(s) waiting over {match['seconds']}s for a node{where} with "
        f"{match['required']} (free across the cluster: {match['available']})"
    )


async def collect(specs: dict[str, ModelSpec]) -> dict[str, ModelStatus]:
    """Status of every model, from Serve, the download actors and the pools' records."""
    pools = sorted({spec.pool for spec in specs.values() if spec.pool})
    serve_status, progress, records = await asyncio.gather(
        asyncio.to_thread(serve.status),
        cluster_progress(),
        asyncio.gather(*(asyncio.to_thread(pool_records.read, pool) for pool in pools)),
    )
    held = dict(zip(pools, records, strict=True))
    statuses: dict[str, ModelStatus] = {}
    for name, spec in specs.items():
        app_name, deployment_name = deployment_of(spec)
        app = serve_status.applications.get(app_name)
        deployment = app.deployments.get(deployment_name) if app else None
        if app is None or deployment is None:
            statuses[name] = ModelStatus("not_deployed", f"no Serve application named {app_name!r} is running")
            continue
        pooled = held[spec.pool] if spec.pool else None
        status = _status(spec, app.message, deployment, progress, pooled)
        replicas = {ReplicaState(state).value.lower(): n for state, n in deployment.replica_states.items()}
        statuses[name] = replace(status, replica_states=replicas)
    return statuses


def _status(
    spec: ModelSpec,
    app_message: str,
    deployment: DeploymentStatusOverview,
    progress: dict[str, list[RepoProgressRecord]],
    pooled: list[pool_records.ReplicaRecord] | None,
) -> ModelStatus:
    """The status of a deployed model, from its deployment's view, its download's progress and, for a
    pooled model, its pool replicas' records."""
    fetching = model_progress(progress, spec.repo_id)
    if deployment.replica_states.get(ReplicaState.RUNNING, 0) > 0:
        if pooled is not None:
            return pooled_status(spec, pooled, progress)
        return ModelStatus("ready", None, fetching)  # with its weights' place on each node
    if deployment.status in ("DEPLOY_FAILED", "UNHEALTHY"):  # a str enum: compares by value
        return ModelStatus("failed", _last_line(deployment.message or app_message or "deploy failed"))
    if _idle(spec, deployment.status, deployment.replica_states):
        return ModelStatus("idle", "scaled to zero; a request starts a replica")
    if reason := pending_reason(deployment.message or "", spec):
        return ModelStatus("pending", reason)
    downloading = fetching is not None and fetching.in_flight
    return ModelStatus("downloading" if downloading else "loading", None, fetching)


def pooled_status(
    spec: ModelSpec, records: list[pool_records.ReplicaRecord], progress: dict[str, list[RepoProgressRecord]]
) -> ModelStatus:
    """A pooled model's state from its pool's running replicas' records."""
    placements = tuple(p for record in records if (p := record.placement(spec.name)))
    states = {p.state for p in placements}
    if "ready" in states:
        return ModelStatus("ready", None, None, placements)
    if "loading" in states:
        fetching = model_progress(progress, spec.repo_id)
        downloading = fetching is not None and fetching.in_flight
        return ModelStatus("downloading" if downloading else "loading", None, fetching, placements)
    failed = [record.models[spec.name].reason for record in records if spec.name in record.models]
    if "failed" in states:
        return ModelStatus("failed", next(filter(None, failed), "its load failed"), None, placements)
    return ModelStatus("idle", f"loaded on no replica of pool {spec.pool!r}; a request loads it", None, placements)
