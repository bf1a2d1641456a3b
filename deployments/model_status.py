"""Where each model stands, for ``/v1/models`` and for refusing requests to models not ready yet.

Combines Ray Serve's view (are replicas running, did the constructor fail and why) with the
download actors' progress (bytes, rate, ETA per node): a model whose replicas are still starting
is "downloading" while its weights are in flight and "loading" once they are on disk, and
"pending" when no node can take a replica (not enough GPUs, no node with its labels), which Serve
says in the deployment's message once a replica has waited ``RAY_SERVE_SLOW_STARTUP_WARNING_S``
(30 s by default) to be scheduled. A model whose autoscaling allows zero replicas and has none,
not even one starting, is "idle": a request wakes it.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from ray import serve

from candle.catalog import ModelSpec
from candle.contracts import ModelProgress
from candle.download.status import cluster_progress, model_progress

State = Literal["idle", "pending", "downloading", "loading", "ready", "failed", "not_deployed"]

# Serve 2.60's message for replicas still waiting for a node (``DeploymentState``'s startup check);
# "required" is a dict, or a list of bundles for placement-group deployments; "available" is what
# is free across the cluster now.
_UNSCHEDULED = re.compile(
    r"has (?P<count>\d+) replicas that have taken more than (?P<seconds>\d+)s to be scheduled\..*?"
    r"Resources required for each replica: (?P<required>\[.*?\]|\{.*?\}|\w+), "
    r"total resources available: (?P<available>\{.*?\}|\w+)",
    re.DOTALL,
)


@dataclass(frozen=True)
class ModelStatus:
    state: State
    reason: str | None = None
    progress: ModelProgress | None = field(default=None)

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"state": self.state}
        if self.reason:
            body["reason"] = self.reason
        if self.progress:
            body["progress"] = self.progress.as_json()
        return body


def _last_line(message: str) -> str:
    """Serve reports constructor failures with a traceback; the last line names the error."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return lines[-1] if lines else message


def _idle(spec: ModelSpec, status: str, replica_states: dict[str, int]) -> bool:
    """Scaled to zero: no replica running or on its way (all ``STOPPING``, or none), and not while a
    (re)deploy is ``UPDATING``, which has no replica yet for a moment before it starts its first."""
    live = sum(count for state, count in replica_states.items() if state != "STOPPING")
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


async def collect(specs: dict[str, ModelSpec], deployment_names: dict[str, str]) -> dict[str, ModelStatus]:
    """Status of every model: ``deployment_names`` maps model name -> its deployment in its app."""
    serve_status, progress = await asyncio.gather(asyncio.to_thread(serve.status), cluster_progress())
    statuses: dict[str, ModelStatus] = {}
    for name, spec in specs.items():
        app = serve_status.applications.get(name)
        deployment = app.deployments.get(deployment_names[name]) if app else None
        if deployment is None:
            statuses[name] = ModelStatus("not_deployed", f"no Serve application named {name!r} is running")
            continue
        if deployment.replica_states.get("RUNNING", 0) > 0:
            statuses[name] = ModelStatus("ready")
            continue
        if deployment.status in ("DEPLOY_FAILED", "UNHEALTHY"):  # a str enum: compares by value
            statuses[name] = ModelStatus("failed", _last_line(deployment.message or app.message or "deploy failed"))
            continue
        if _idle(spec, deployment.status, deployment.replica_states):
            statuses[name] = ModelStatus("idle", "scaled to zero; a request starts a replica")
            continue
        if reason := pending_reason(deployment.message or "", spec):
            statuses[name] = ModelStatus("pending", reason)
            continue
        fetching = model_progress(progress, spec.repo_id)
        downloading = fetching is not None and fetching.in_flight
        statuses[name] = ModelStatus("downloading" if downloading else "loading", None, fetching)
    return statuses
