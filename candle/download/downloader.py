"""The node's download service: one transfer per blob, however many replicas ask at once.

``NodeDownloader`` is a plain asyncio class (so it can be tested in-process) that runs as a Ray
actor, one per node (see ``client.py``). Requests are resolved to a commit and a list of files;
each blob not verified yet gets exactly one transfer task, keyed by (resolved cache folder, blob
etag), which every overlapping request awaits through ``asyncio.shield``: a caller that is
cancelled (a replica that dies) stops waiting, the transfer goes on for the others. Other writers
of the same cache (another cluster, ``hf download``) are excluded by huggingface_hub's lock of each
blob, and what they publish is verified before it is used. Hub I/O, locks and hashing run in
threads (transfers in a bounded pool), so the actor's event loop only schedules and answers
``progress``/``ping`` quickly.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from ipaddress import ip_address
from typing import Any, TypeVar

import ray
from huggingface_hub import constants, hf_hub_url
from huggingface_hub.utils import build_hf_headers

from .cluster import pins
from .cluster.sourcing import BlobJob, ClusterSources
from .config import DownloaderSettings, FetchRequest
from .errors import NotCached
from .node.cache_layout import BlobState, RepoCache, cache_errors, ensure_free_space
from .node.listing import RemoteFile, RepoListing, list_repo, storage_folder
from .node.metrics import DownloadMetrics
from .node.partial_file import PartialFile
from .node.progress import FileProgress, RepoProgress
from .node.ranges import Drop, Links, Source
from .node.transfer import adopt_published, download_verified
from .records import BlobSource, RepoProgressRecord

T = TypeVar("T")
logger = logging.getLogger(__name__)

# One transfer per blob per cache: (resolved repo cache folder, blob etag). The cluster-wide key of a
# blob is the coordinator's BlobKey (repo type, repo id, etag).
CachedBlob = tuple[str, str]
METRICS_INTERVAL_S = 2.0


class NodeDownloader:
    """Fetches repos into this node's Hugging Face cache, deduplicating transfers per blob."""

    def __init__(self, settings: DownloaderSettings | None = None) -> None:
        self.settings = settings or DownloaderSettings.from_env()
        # Hashing and writing gigabytes is background work: let replicas on the node go first.
        os.nice(self.settings.niceness)
        self._pool = ThreadPoolExecutor(self.settings.max_concurrent_files, thread_name_prefix="candle-transfer")
        self._host = self._peer_host()
        self._links = Links(self.settings, local_address=_own_loopback(self._host))
        self._listings: dict[tuple[object, ...], asyncio.Task[RepoListing]] = {}
        self._transfers: dict[CachedBlob, asyncio.Task[None]] = {}
        self._files: dict[CachedBlob, FileProgress] = {}
        self._repos: dict[tuple[str, str], RepoProgress] = {}
        self._sources = self._cluster_sources()
        self._metrics = DownloadMetrics() if ray.is_initialized() else None
        self._publisher: asyncio.Task[None] | None = None

    def _peer_host(self) -> str | None:
        """The address this node serves peers at, when it runs as a Ray actor with coordination on."""
        if not (self.settings.coordinate and ray.is_initialized()):
            return None
        if ray.get_runtime_context().get_actor_id() is None:
            return None
        return self.settings.peer_host or ray.util.get_node_ip_address()

    def _cluster_sources(self) -> ClusterSources | None:
        """Peer copies and the coordinator, when this runs as a Ray actor with coordination on."""
        if self._host is None:
            return None
        return ClusterSources(self.settings, ray.get_runtime_context().get_node_id(), self._host)

    async def ping(self) -> float:
        """Liveness and loop-latency probe: returns the actor's clock."""
        return time.time()

    async def fetch(self, request: FetchRequest) -> str:
        """Bring every file of ``request`` into the cache, verified; return the snapshot folder."""
        if self._metrics is not None and self._publisher is None:
            self._publisher = asyncio.ensure_future(self._publish_metrics(self._metrics))
        repo = self._repos.setdefault(
            (request.repo_id, request.revision or constants.DEFAULT_REVISION),
            RepoProgress(request.repo_id, request.revision or constants.DEFAULT_REVISION),
        )
        try:
            with cache_errors(request.repo_id):
                listing = await self._list(request)
                repo.commit = listing.commit
                cache, states = await asyncio.to_thread(self._inspect, request, listing)
                await self._remove_orphans(request, cache, states)
                await self._bring_in(request, listing, cache, states, repo)
                for f in listing.files:
                    cache.link(listing.commit, f)
                cache.write_ref(listing.revision, listing.commit)
        except Exception as e:
            repo.state, repo.error = "failed", str(e)
            raise
        if all(p.state == "done" for p in repo.files.values()):
            repo.state, repo.error = "done", None
        return str(cache.snapshot_dir(listing.commit))

    async def progress(self, repo_id: str | None = None, revision: str | None = None) -> list[RepoProgressRecord]:
        """Progress of every model this node has been asked for, or of one (at one revision)."""
        return [
            p.record()
            for (rid, rev), p in self._repos.items()
            if repo_id in (None, rid) and (revision is None or revision == rev or revision == p.commit)
        ]

    def close(self) -> None:
        """Stop publishing metrics and let the transfer threads end (for downloaders run in-process)."""
        if self._publisher is not None:
            self._publisher.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._links.close()

    # -- internals -----------------------------------------------------------------------------

    @staticmethod
    def _inspect(request: FetchRequest, listing: RepoListing) -> tuple[RepoCache, dict[str, BlobState]]:
        """The repo's cache folder and what it holds of each blob (file system calls: off the loop)."""
        cache = RepoCache(storage_folder(request))
        return cache, {f.etag: cache.blob_state(f) for f in listing.files}

    async def _remove_orphans(self, request: FetchRequest, cache: RepoCache, states: dict[str, BlobState]) -> None:
        """Clear the repo's partial files that dead writers left, but those a transfer here may resume."""
        keep = {etag for etag, state in states.items() if state != "verified"}
        keep |= {etag for folder, etag in self._transfers if folder == str(cache.folder)}
        removed = await asyncio.to_thread(cache.remove_orphans, keep, self.settings.orphan_age_s)
        if removed:
            logger.info("%s: removed %d partial files that no transfer resumes", request.repo_id, len(removed))

    async def _bring_in(
        self,
        request: FetchRequest,
        listing: RepoListing,
        cache: RepoCache,
        states: dict[str, BlobState],
        repo: RepoProgress,
    ) -> None:
        """Wait for every blob of ``listing`` not verified in ``cache`` (starting the transfers missing)."""
        if self._sources is not None:
            self._sources.expose(cache.folder.parent)
        pending = [f for f in listing.files if states[f.etag] != "verified"]
        absent = {f.etag: f for f in pending if states[f.etag] == "absent"}
        if absent and constants.HF_HUB_OFFLINE:
            raise NotCached(request.repo_id, next(iter(absent.values())).path, "HF_HUB_OFFLINE is set")
        needed = sum(f.size for f in absent.values() if self._key(cache, f) not in self._transfers)
        if needed:
            ensure_free_space(request.repo_id, cache.blobs, needed, self.settings.reserve_bytes)
        if pending:
            repo.state = "downloading"
        for f in listing.files:
            repo.files[f.path] = progress = self._file_progress(cache, f)
            if states[f.etag] == "verified":
                progress.done, progress.state = f.size, "done"
        await asyncio.gather(*(asyncio.shield(self._transfer(request, listing, cache, f)) for f in pending))

    async def _publish_metrics(self, metrics: DownloadMetrics) -> None:
        links = self._links
        while True:
            metrics.publish(p.record() for p in self._repos.values())
            uploaded = self._sources.server.sent if self._sources is not None else 0
            metrics.links(links.open, links.received.copy(), links.dropped.copy(), links.read_back, uploaded)
            await asyncio.sleep(METRICS_INTERVAL_S)

    @staticmethod
    def _key(cache: RepoCache, f: RemoteFile) -> CachedBlob:
        return (str(cache.folder), f.etag)

    def _file_progress(self, cache: RepoCache, f: RemoteFile) -> FileProgress:
        key = self._key(cache, f)
        if key not in self._files:
            self._files[key] = FileProgress(f.path, f.size)
        return self._files[key]

    async def _run_blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, partial(fn, *args, **kwargs))

    def _list(self, request: FetchRequest) -> asyncio.Task[RepoListing]:
        """One listing call per distinct request in flight (same repo, revision, patterns, credentials)."""
        key = (
            request.repo_id,
            request.repo_type,
            request.revision,
            request.allow_patterns,
            request.ignore_patterns,
            request.cache_dir,
            request.endpoint,
            request.token_fingerprint,
        )
        task = self._listings.get(key)
        if task is None:
            task = asyncio.ensure_future(asyncio.to_thread(list_repo, request, pins=pins))
            self._listings[key] = task
            task.add_done_callback(lambda _: self._listings.pop(key, None))
        return task

    def _transfer(
        self, request: FetchRequest, listing: RepoListing, cache: RepoCache, f: RemoteFile
    ) -> asyncio.Task[None]:
        """The one task that brings this blob in; created by the first request that needs it."""
        key = self._key(cache, f)
        task = self._transfers.get(key)
        if task is None:
            # A context of its own: Ray links the calls a task makes (to the coordinator, to peers) to
            # the actor call whose context it runs in, and ray.cancel of that first caller's call
            # would cancel them too, failing the transfer that every other caller waits on.
            task = asyncio.get_running_loop().create_task(
                self._download(request, listing, cache, f), context=contextvars.Context()
            )
            self._transfers[key] = task
            task.add_done_callback(lambda _: self._transfers.pop(key, None))
        return task

    async def _download(self, request: FetchRequest, listing: RepoListing, cache: RepoCache, f: RemoteFile) -> None:
        progress = self._file_progress(cache, f)
        hub_url = hf_hub_url(
            request.repo_id, f.path, repo_type=request.repo_type, revision=listing.commit, endpoint=request.endpoint
        )
        hub = Source(hub_url, build_hf_headers(token=request.token, library_name="candle"), "hub")
        # This transfer's bytes, resumed by all its attempts and sources, with who wrote which of them.
        partial = PartialFile(cache.partial_path(f), f, pieces=f.size > self.settings.range_size)

        async def transfer(
            sources: Sequence[Source], settings: DownloaderSettings, dropped: dict[str, Drop]
        ) -> set[str]:
            return await self._run_blocking(
                download_verified,
                repo_id=request.repo_id,
                sources=sources,
                cache=cache,
                partial=partial,
                progress=progress,
                settings=settings,
                links=self._links,
                dropped=dropped,
            )

        started = time.monotonic()
        try:
            # Whoever writes this blob now (hf download, another cluster or node) finishes first, and theirs
            # is used if it verifies: in a shared cache, another node brought it in (source "shared").
            if await self._run_blocking(adopt_published, request.repo_id, cache, f):
                source: BlobSource = "shared" if self.settings.shared_cache else "cache"
                progress.came_from(source)
            elif constants.HF_HUB_OFFLINE:
                raise NotCached(request.repo_id, f.path, "HF_HUB_OFFLINE is set and the cached copy is corrupt")
            elif self._sources is None:
                progress.came_from("hub")
                await transfer([hub], self.settings, {})
                source = "hub"
            else:
                key = (request.repo_type, request.repo_id, f.etag)
                source = await self._sources.obtain(BlobJob(key, cache, f, hub, transfer, partial, progress))
        except BaseException:
            progress.state = "failed"
            partial.discard()
            partial.provenance.discard()
            raise
        finally:
            self._links.count_read_back(partial.read_back)
        progress.state, progress.done = "done", f.size
        if self._metrics is not None and source != "cache":
            self._metrics.transferred(source, f.size)
        elapsed = time.monotonic() - started
        logger.info(
            "%s/%s: %.1f MB from the %s, verified, in %.1fs", request.repo_id, f.path, f.size / 1e6, source, elapsed
        )

    def __repr__(self) -> str:  # shown by Ray in logs and the dashboard
        return f"NodeDownloader(active={len(self._transfers)})"


def _own_loopback(host: str | None) -> str | None:
    """The address to connect to peers from: the node's own, when nodes share one machine's loopback
    (simulated clusters), so a peer's slots per client address count each node apart."""
    try:
        return host if host is not None and ip_address(host).is_loopback else None
    except ValueError:
        return None
