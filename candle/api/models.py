"""What ``/v1/models`` says about each model (and a 503 about a model not ready): its card, its state
and, while its weights arrive, their progress per node. The gateway fills it from Serve and the
download actors (``deployments.model_status``); the JSON shape is the API's, defined here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from candle.catalog import ModelSpec
from candle.download.records import ModelProgress

State = Literal["idle", "pending", "downloading", "loading", "ready", "failed", "not_deployed"]
# A pooled model on one pool replica: being loaded, loaded, unloaded (after a load), or its last load failed.
ReplicaModelState = Literal["loading", "ready", "idle", "failed"]


@dataclass(frozen=True)
class Placement:
    """Where a pooled model is (or was) loaded: a pool replica, its node, and how often it loaded it."""

    replica_id: str
    node_id: str
    state: ReplicaModelState
    loads: int


@dataclass(frozen=True)
class ModelStatus:
    state: State
    reason: str | None = None
    progress: ModelProgress | None = field(default=None)
    replicas: tuple[Placement, ...] = ()  # a pooled model: the pool replicas that have loaded it
    # Its replicas by Serve's replica state, lower case ("running": 2, "starting": 1), for the metrics.
    replica_states: Mapping[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"state": self.state}
        if self.reason:
            body["reason"] = self.reason
        if self.progress:
            body["progress"] = progress_json(self.progress)
        if self.replicas:
            body["replicas"] = [
                {"replica_id": r.replica_id, "node_id": r.node_id, "state": r.state, "loads": r.loads}
                for r in self.replicas
            ]
        return body


def model_card(spec: ModelSpec, status: ModelStatus) -> dict[str, Any]:
    """One entry of ``/v1/models``: OpenAI's model object, plus candle's capability, repo, pool and status."""
    return {
        "id": spec.name,
        "object": "model",
        "created": 0,
        "owned_by": spec.repo_id.split("/")[0],
        "capability": spec.capability,
        "repo_id": spec.repo_id,
        **({"pool": spec.pool} if spec.pool else {}),
        "status": status.as_dict(),
    }


def progress_json(progress: ModelProgress) -> dict[str, Any]:
    """The ``progress`` object of ``/v1/models`` and of 503 answers."""
    total = progress.bytes_total
    eta = progress.eta_s
    return {
        "bytes_done": progress.bytes_done,
        "bytes_total": total,
        "fraction": round(progress.bytes_done / total, 4) if total else 1.0,
        "rate_bytes_per_s": round(progress.rate, 1),
        "eta_s": round(eta, 1) if eta is not None else None,
        "nodes": [
            {
                "node_id": node,
                "state": r.state,
                "bytes_done": r.bytes_done,
                "bytes_total": r.bytes_total,
                "fraction": round(r.fraction, 4),
                "error": r.error,
                "commit": r.commit,
                "rate_bytes_per_s": round(r.rate, 1),
                "eta_s": round(r.eta_s, 1) if r.eta_s is not None else None,
                # Where the node copies from now (hub, peer, relay, shared), as `candle status` draws it.
                "sources": [
                    {"source": s.source, "upstream": s.upstream, "rate_bytes_per_s": round(s.rate, 1)}
                    for s in r.sources
                ],
                "transfers": [
                    {
                        "path": f.path,
                        "source": f.source,
                        "upstream": f.upstream,
                        "bytes_done": f.bytes_done,
                        "bytes_total": f.bytes_total,
                        "rate_bytes_per_s": round(f.rate, 1),
                    }
                    for f in r.files
                    if f.state == "downloading"
                ],
            }
            for node, r in progress.nodes
        ],
    }
