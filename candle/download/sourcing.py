"""Where a node gets a blob from: a peer that holds or relays it, the hub (once per cluster), or a shared cache.

``ClusterSources`` is the downloader's side of the coordinator (see ``coordinator.py``): it asks
where to fetch each blob, copies from peers with the same verified, resumable transfer used for
the hub (falling back to another peer, then the hub, when a peer dies or stalls; only a peer that
caused the failure is forgotten cluster-wide, never one a local error interrupted), keeps its claim
on a hub download alive, serves its own blobs to peers, and re-registers them with a coordinator
that was restarted. If the coordinator cannot be reached at all, the node carries on alone.

With relaying on (the default) a node also serves each blob while it receives it, from its
transfer's ``.incomplete`` file, so others can copy from it before it holds the whole blob. Every
source, hub, holder or relay, appends to that same file: a node whose source dies resumes from the
next one with ``Range`` from the bytes it has, never from the start, and the blob is verified
against the hub's checksum before it is published, whichever sources its bytes came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
from ray.exceptions import RayActorError

from .cache_layout import RepoCache
from .config import DownloaderSettings
from .coordinator import BlobKey, Claim, coordinator, peer_secret
from .errors import DownloadError, IntegrityError, OutOfDisk
from .listing import RemoteFile
from .peer import PeerServer
from .progress import FileProgress

logger = logging.getLogger(__name__)

# transfer(url, headers, settings): bring the blob in from that URL, verified (see transfer.py).
Transfer = Callable[[str, dict[str, str], DownloaderSettings], Awaitable[None]]


@dataclass(frozen=True)
class BlobJob:
    """One blob for a node to bring in: where it goes, how to fetch from a URL, and the hub's URL."""

    key: BlobKey
    cache: RepoCache
    file: RemoteFile
    hub: tuple[str, dict[str, str]]  # URL and headers
    transfer: Transfer
    partial: Path  # the transfer's file: every source appends to it, and it is relayed to peers meanwhile
    progress: FileProgress  # told each source


class ClusterSources:
    def __init__(self, settings: DownloaderSettings, node_id: str, host: str) -> None:
        self.settings = settings
        self.node_id = node_id
        self.secret = peer_secret()
        self.server = PeerServer(host, self.secret, settings.peer_bandwidth or None)
        self._coordinator = None
        self._epoch: str | None = None
        self._exposed: set[Path] = set()
        self._announcing: set[asyncio.Task[None]] = set()

    def expose(self, cache_dir: Path) -> asyncio.Task[None] | None:
        """Let peers copy verified blobs of this cache folder; returns the announcement of a new folder.

        A downloader restarted on a node serves the blobs already there at a new URL. Its first
        fetch of a cached repo claims nothing, so the coordinator would only learn that URL on some
        later claim, and meanwhile send nodes to the dead one and then to the hub. The folder's blobs
        are announced at once instead, in the background: a fetch of cached weights never waits on
        the coordinator.
        """
        if cache_dir in self._exposed:
            return None
        self._exposed.add(cache_dir)
        self.server.add_root(str(cache_dir))
        task = asyncio.get_running_loop().create_task(self.announce())
        self._announcing.add(task)
        task.add_done_callback(self._announcing.discard)
        return task

    async def announce(self) -> None:
        """Register every verified blob this node serves, and the URL it serves it at, with the coordinator."""
        holdings = await asyncio.to_thread(self.server.holdings)  # a directory walk: off the actor's loop
        self._epoch = await self._call("register", self.node_id, holdings)

    def blob_url(self, cache: RepoCache, f: RemoteFile) -> str:
        return self.server.blob_url(str(cache.folder.parent), cache.folder.name, f.etag)

    async def obtain(self, job: BlobJob) -> str:
        """Bring ``job``'s blob into its cache from wherever the coordinator says, the hub as the last resort.

        Returns where the last bytes came from: ``hub``, ``peer``, ``relay`` or ``shared``.
        """
        f, cache = job.file, job.cache
        url = self.blob_url(cache, f)
        relaying = (
            self.server.serving_partial(str(cache.folder.parent), cache.folder.name, f.etag, job.partial, f.size)
            if self.settings.relay
            else contextlib.nullcontext()
        )
        try:
            with relaying:
                source = await self._obtain(job, url if self.settings.relay else None)
                if source != "shared":
                    await self._call("done", job.key, self.node_id, url)
                return source
        except BaseException:
            await self._call("failed", job.key, self.node_id)  # no longer a download or a relay to send others to
            raise

    async def _obtain(self, job: BlobJob, relay_url: str | None) -> str:
        key, f, progress = job.key, job.file, job.progress
        tried: list[str] = []
        while True:
            decision = await self._claim(key, tried, relay_url)
            action = decision.action if decision else "hub"
            if action == "shared":
                if job.cache.has_blob(f):
                    progress.came_from("shared")
                    return "shared"
                for node in decision.holders:  # the recorded copy is gone from the shared cache
                    await self._call("forget", key, node)
                continue
            if action == "wait":
                await self._call("wait", key, decision.version, self.settings.stall_timeout * 3)
                tried.clear()  # those still offered answered (the dead were forgotten): worth a new try
                continue
            if action == "hub":
                progress.came_from("hub")
                await self._from_hub(key, job.hub, job.transfer)
                return "hub"
            node, url = next(iter(decision.peers.items()))
            kind = "relay" if decision.relay else "peer"
            progress.came_from(kind, node)
            try:
                auth = {"Authorization": f"Bearer {self.secret}"}
                await job.transfer(url, auth, replace(self.settings, max_attempts=1))
            except OutOfDisk:
                raise  # ours, not the peer's: no other source has more room
            except DownloadError as e:
                logger.warning("%s: %s %s could not serve it (%s); trying elsewhere", f.path, kind, node[:12], e.detail)
                tried.append(url)  # this copy, not the node: a restarted downloader there is a new source
                if isinstance(e, IntegrityError) or not await asyncio.to_thread(self._serves, url):
                    await self._call("forget", key, node, url)  # the peer is to blame: nobody else should try it
                continue
            return kind

    def _serves(self, url: str) -> bool:
        """Whether a peer answers for its blob: a failed copy from one that does was this node's doing.

        Refused or reset connections, time-outs and 401/404 (the blob or the secret is gone) blame
        the peer; a 503 means it is busy, not broken.
        """
        headers = {"Authorization": f"Bearer {self.secret}", "Range": "bytes=0-0"}
        try:
            status = httpx.get(url, headers=headers, timeout=self.settings.stall_timeout).status_code
        except httpx.TransportError:
            return False
        return status < 400 or status == 503

    async def _from_hub(self, key: BlobKey, hub: tuple[str, dict[str, str]], transfer: Transfer) -> None:
        keepalive = asyncio.create_task(self._keep_claim(key))
        try:
            await transfer(hub[0], hub[1], self.settings)
        finally:
            keepalive.cancel()

    async def _keep_claim(self, key: BlobKey) -> None:
        while True:
            await asyncio.sleep(self.settings.takeover_after_s / 3)
            await self._call("progress", key, self.node_id)

    async def _claim(self, key: BlobKey, tried: list[str], relay_url: str | None) -> Claim | None:
        decision = await self._call("claim", key, self.node_id, tuple(tried), relay_url)
        if decision is not None and decision.epoch != self._epoch:
            # A coordinator we have not told about our blobs (new, or restarted), unless a folder's
            # announcement under way is telling it now.
            await asyncio.gather(*self._announcing)
            if decision.epoch != self._epoch:
                await self.announce()
        return decision

    async def _call(self, method: str, *args: object) -> object | None:
        """A coordinator call, retried while it restarts; None if it stays unreachable ``takeover_after_s``.

        The node then carries on alone. Retrying first matters: a claim answered by nobody would
        start a download another node may be running, and a lost ``done`` hides a holder.
        """
        give_up = time.monotonic() + self.settings.takeover_after_s
        failures = 0
        while True:
            try:
                if self._coordinator is None:
                    self._coordinator = coordinator(self.settings.shared_cache, self.settings.takeover_after_s)
                return await getattr(self._coordinator, method).remote(*args)
            except (RayActorError, ValueError) as e:
                self._coordinator = None
                failures += 1
                if time.monotonic() >= give_up:
                    logger.warning("download coordinator unreachable (%s); continuing without it", type(e).__name__)
                    return None
            await asyncio.sleep(self.settings.backoff(failures))

    def close(self) -> None:
        self.server.close()
