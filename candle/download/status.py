"""Download progress across the cluster: ask every node's downloader that exists (never create one)."""

from __future__ import annotations

import asyncio
from typing import Any

import ray

from .client import NAMESPACE, downloader_name


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


async def cluster_progress(repo_id: str | None = None, timeout_s: float = 2.0) -> dict[str, list[dict[str, Any]]]:
    """Node id -> that node's progress entries (for ``repo_id``, or all); unreachable nodes are left out."""
    handles = await asyncio.to_thread(_existing_downloaders)
    replies = await asyncio.gather(
        *(asyncio.wait_for(_awaitable(h.progress.remote(repo_id)), timeout_s) for h in handles.values()),
        return_exceptions=True,
    )
    return {node: reply for node, reply in zip(handles, replies, strict=True) if isinstance(reply, list)}


async def _awaitable(ref: Any) -> Any:
    return await ref


def summarize(per_node: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """One progress view of a model across nodes: totals, plus each node's state and bytes."""
    nodes = [{"node_id": node, **entry} for node, entries in per_node.items() for entry in entries]
    if not nodes:
        return None
    done = sum(int(n["bytes_done"]) for n in nodes)
    total = sum(int(n["bytes_total"]) for n in nodes)
    rate = sum(float(n["rate"]) for n in nodes)
    return {
        "bytes_done": done,
        "bytes_total": total,
        "fraction": round(done / total, 4) if total else 1.0,
        "rate_bytes_per_s": round(rate, 1),
        "eta_s": round((total - done) / rate, 1) if rate > 0 else None,
        "nodes": [
            {k: n[k] for k in ("node_id", "state", "bytes_done", "bytes_total", "error", "commit")} for n in nodes
        ],
    }
