"""``await fetch(...)`` from any Ray worker, task or Serve replica, through this node's downloader.

The downloader of a node is a detached, named actor pinned to that node (hard affinity, no CPU),
brought up by the cluster's downloader factory when first needed (``factory.py``), so all replicas
and tasks of a node share one, and it outlives the replica that asked for it. This module talks to
it by name and imports neither its implementation nor huggingface_hub's internals: it runs in
replicas under a model's own libraries (an older huggingface_hub) too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypedDict, cast

import ray
from ray.actor import ActorHandle
from ray.exceptions import ActorDiedError
from typing_extensions import Unpack

from .cluster.factory import NAMESPACE, downloader_factory, downloader_name
from .config import FetchRequest
from .records import RepoProgressRecord

__all__ = ["NAMESPACE", "downloader_name", "fetch", "fetch_request", "make_request", "node_downloader"]

logger = logging.getLogger(__name__)

_ATTEMPTS = 3  # downloaders a fetch tries before it gives up (each one resumes the last one's work)


def node_downloader(node_id: str | None = None) -> ActorHandle:
    """The download actor of ``node_id`` (default: the node this code runs on), brought up if missing.

    Blocking GCS calls (and, the first time on a node, the factory's reply): call it from a thread
    in async code.
    """
    node_id = node_id or ray.get_runtime_context().get_node_id()
    try:
        return ray.get_actor(downloader_name(node_id), namespace=NAMESPACE)
    except ValueError:
        return cast(ActorHandle, ray.get(downloader_factory().downloader.remote(node_id)))


def _patterns(patterns: str | Sequence[str] | None) -> tuple[str, ...] | None:
    if patterns is None:
        return None
    return (patterns,) if isinstance(patterns, str) else tuple(patterns)


class RequestOptions(TypedDict, total=False):
    """What a fetch can ask for besides the repo (see ``FetchRequest``)."""

    revision: str | None
    allow_patterns: str | Sequence[str] | None
    ignore_patterns: str | Sequence[str] | None
    repo_type: str
    cache_dir: str | Path | None
    endpoint: str | None
    token: str | None


def make_request(repo_id: str, **options: Unpack[RequestOptions]) -> FetchRequest:
    cache_dir = options.get("cache_dir")
    return FetchRequest(
        repo_id=repo_id,
        revision=options.get("revision"),
        allow_patterns=_patterns(options.get("allow_patterns")),
        ignore_patterns=_patterns(options.get("ignore_patterns")),
        repo_type=options.get("repo_type") or "model",
        cache_dir=str(cache_dir) if cache_dir is not None else None,
        endpoint=options.get("endpoint"),
        token=options.get("token"),
    )


ProgressCallback = Callable[[RepoProgressRecord], None]


async def fetch_request(
    request: FetchRequest, on_progress: ProgressCallback | None = None, progress_interval_s: float = 1.0
) -> Path:
    """Run ``request`` on this node's downloader; ``on_progress`` gets its progress while it runs.

    If the downloader dies (killed, or its process crashed), the next one is created and asked
    again: it resumes what the dead one left in the cache, so the caller only sees a delay.
    """
    for attempt in range(1, _ATTEMPTS):
        try:
            downloader = await asyncio.to_thread(node_downloader)
            return await _fetch_once(downloader, request, on_progress, progress_interval_s)
        except ActorDiedError:
            logger.warning("%s: this node's downloader died; asking its successor", request.repo_id)
            await asyncio.sleep(0.5 * attempt)
    return await _fetch_once(await asyncio.to_thread(node_downloader), request, on_progress, progress_interval_s)


async def _fetch_once(
    downloader: ActorHandle, request: FetchRequest, on_progress: ProgressCallback | None, progress_interval_s: float
) -> Path:
    result: asyncio.Future[str] = asyncio.ensure_future(downloader.fetch.remote(request))
    while on_progress is not None and not result.done():
        await asyncio.wait({result}, timeout=progress_interval_s)
        if not result.done():
            for entry in await downloader.progress.remote(request.repo_id, request.revision):
                on_progress(entry)
    return Path(await result)


async def fetch(
    repo_id: str,
    *,
    on_progress: ProgressCallback | None = None,
    progress_interval_s: float = 1.0,
    **options: Unpack[RequestOptions],
) -> Path:
    """Return the local snapshot folder of ``repo_id`` once every selected file is there, verified.

    ``options`` are those of ``make_request`` (revision, allow/ignore patterns, repo type, cache
    folder, endpoint, token). Raises the typed errors of ``candle.download.errors`` (repo, revision
    or file not found, access denied, out of disk, integrity failure, transfer failed), each naming
    repo, file and cause. ``on_progress`` is called every ``progress_interval_s`` with the model's
    progress on this node (state, bytes done and total, rate, ETA, per-file detail) until it ends.
    """
    return await fetch_request(make_request(repo_id, **options), on_progress, progress_interval_s)
