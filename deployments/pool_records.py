"""What each pool replica says about the models it holds, for ``/v1/models`` and the gateway's waits.

A pool replica keeps one record in the cluster's key-value store (GCS): the state of every model it
has loaded or tried to (``loading``, ``ready``, ``idle`` once unloaded, ``failed`` with the reason)
and how often it loaded each. It writes the record when a state changes and again every
``HEARTBEAT_S``; the gateway reads a pool's records on each status refresh.

Why the GCS store and not a registry actor: it outlives every actor and needs no process of its own
(an actor would be one more process to place, keep alive and restart, and its state would die with
it), and a read is one GCS call per pool replica. A replica that stops normally deletes its record;
one that dies without a word stops refreshing it, and readers ignore a record older than
``STALE_AFTER_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field

from candle.api.models import Placement, ReplicaModelState
from candle.download.cluster import kv

logger = logging.getLogger("ray.serve")

HEARTBEAT_S = 2.0
STALE_AFTER_S = 15.0


@dataclass(frozen=True)
class ModelOnReplica:
    state: ReplicaModelState
    loads: int = 0  # loads this replica started and finished (first loads and reloads)
    reason: str | None = None  # why the last load failed


@dataclass(frozen=True)
class ReplicaRecord:
    replica_id: str
    node_id: str
    written_at: float  # time.time() when written: the heartbeat readers check
    models: dict[str, ModelOnReplica] = field(default_factory=dict)

    def placement(self, model: str) -> Placement | None:
        on = self.models.get(model)
        return Placement(self.replica_id, self.node_id, on.state, on.loads) if on else None


def _key(pool: str, replica_id: str = "") -> str:
    return f"pools/{pool}/{replica_id}"


def write(pool: str, record: ReplicaRecord) -> None:
    """Store ``record`` as the replica's current one (blocking: a GCS call)."""
    kv.put(_key(pool, record.replica_id), json.dumps(asdict(record)).encode())


def delete(pool: str, replica_id: str) -> None:
    kv.delete(_key(pool, replica_id))


def read(pool: str, now: float | None = None) -> list[ReplicaRecord]:
    """The records of ``pool``'s replicas alive now (refreshed within ``STALE_AFTER_S``), by replica id."""
    now = time.time() if now is None else now
    records = []
    for raw in kv.scan(_key(pool)).values():
        data = json.loads(raw)
        models = {name: ModelOnReplica(**on) for name, on in data.pop("models").items()}
        record = ReplicaRecord(**data, models=models)
        if now - record.written_at <= STALE_AFTER_S:
            records.append(record)
    return sorted(records, key=lambda r: r.replica_id)


class ReplicaStatus:
    """This replica's record, kept in the store: written at each change and every ``HEARTBEAT_S``."""

    def __init__(self, pool: str, replica_id: str, node_id: str) -> None:
        self.pool, self.replica_id, self.node_id = pool, replica_id, node_id
        self.models: dict[str, ModelOnReplica] = {}
        self._changed = asyncio.Event()

    def set(self, model: str, state: ReplicaModelState, reason: str | None = None) -> None:
        """``model`` is now in ``state``; entering ``ready`` counts a load."""
        loads = self.models[model].loads if model in self.models else 0
        self.models[model] = ModelOnReplica(state, loads + (state == "ready"), reason)
        self._changed.set()

    async def publish(self) -> None:
        """Forever: write the record whenever it changes, and at least every ``HEARTBEAT_S``."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), HEARTBEAT_S)
            self._changed.clear()
            record = ReplicaRecord(self.replica_id, self.node_id, time.time(), dict(self.models))
            try:
                await asyncio.to_thread(write, self.pool, record)
            except Exception:  # the GCS away for a moment: the next beat writes it again
                logger.exception("%s: writing the pool replica's record failed", self.pool)

    async def withdraw(self) -> None:
        await asyncio.to_thread(delete, self.pool, self.replica_id)
