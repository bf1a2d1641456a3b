"""Download progress across the cluster: ask every node's downloader that exists (never create one)."""

from __future__ import annotations

import asyncio
from typing import Any

import ray

from ..records import ModelProgress, RepoProgressRecord
from .factory import NAMESPACE, downloader_name


def _existing_downloaders() -> dict[str, Any]:
    """Handles of the download actors of alive nodes (blocking GCS calls: run in a thread)."""
    handles = {}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        try:
            handles[node["NodeID"]] = ray.get_actor(downloader_name(node["NodeID"]), namespace=NAMESPACE)
        except ValueError:
            continue
    return handles


async def cluster_progress(repo_id: str | None = None, timeout_s: float = 2.0) -> dict[str, list[RepoProgressRecord]]:
    """Node id -> that node's progress entries (for ``repo_id``, or all); unreachable nodes are left out."""
    handles = await asyncio.to_thread(_existing_downloaders)
    replies = await asyncio.gather(
        *(asyncio.wait_for(_awaitable(h.progress.remote(repo_id)), timeout_s) for h in handles.values()),
        return_exceptions=True,
    )
    return {node: reply for node, reply in zip(handles, replies, strict=True) if isinstance(reply, list)}


async def _awaitable(ref: Any) -> Any:
    return await ref


def model_progress(per_node: dict[str, list[RepoProgressRecord]], repo_id: str) -> ModelProgress | None:
    """One view of ``repo_id`` across the nodes fetching it, or None where no node has been asked."""
    nodes = tuple(
        (node, record) for node, records in per_node.items() for record in records if record.repo_id == repo_id
    )
    return ModelProgress(nodes) if nodes else None
