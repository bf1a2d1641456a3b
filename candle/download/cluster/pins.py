"""One commit per branch per cluster: what a branch resolved to when the cluster first fetched it.

A model named by a branch (``main``) is resolved by whichever node fetches it. If the branch moves
on the hub between two nodes' fetches (a rollout, a replica restarted on a new node a week later),
the nodes would serve different weights and code under one model name. So the first resolution in
a cluster is recorded, first writer wins, and every later fetch of that branch in the cluster uses
it. To move a deployment to a newer commit, name the commit in the catalog's ``revision``.

The record lives in the GCS's key-value store (the one ``coordinator.peer_secret`` uses): its
put-if-absent is atomic, and it outlives every actor, so no restart can forget a pin. Outside a Ray
cluster (a plain process) there is nothing to agree with and nothing is recorded.
"""

from __future__ import annotations

import logging

from huggingface_hub import constants

from ..config import FetchRequest
from ..node.redact import redact_url
from ..node.safe_names import check_commit
from . import kv

logger = logging.getLogger(__name__)


def _key(request: FetchRequest, revision: str) -> str:
    """Per hub (a mirror may hold other commits), repo type, repo and branch."""
    endpoint = redact_url(request.endpoint or constants.ENDPOINT)
    return f"candle/pins/{endpoint}/{request.repo_type}/{request.repo_id}@{revision}"


def pinned_commit(request: FetchRequest, revision: str) -> str | None:
    """The commit this cluster resolved ``revision`` to first, if it did (checked like a hub's answer)."""
    if not kv.connected():
        return None
    value = kv.get(_key(request, revision))
    return check_commit(request.repo_id, value.decode()) if value else None


def pin_commit(request: FetchRequest, revision: str, commit: str) -> str:
    """Record that ``revision`` is ``commit`` in this cluster, unless another fetch did first; return the pin."""
    if not kv.connected():
        return commit
    pinned = check_commit(request.repo_id, kv.put_if_absent(_key(request, revision), commit.encode()).decode())
    if pinned == commit:
        logger.info("%s: %s is %s for this cluster", request.repo_id, revision, commit)
        return commit
    logger.warning(
        "%s: %s is %s on the hub now; this cluster keeps %s, which it fetched first "
        "(name the new commit in the catalog's revision to move to it)",
        request.repo_id,
        revision,
        commit,
        pinned,
    )
    return pinned
