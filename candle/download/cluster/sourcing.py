"""Where a node gets a blob from: a peer that holds or relays it, the hub (once per cluster), or a shared cache.

``ClusterSources`` is the downloader's side of the coordinator (see ``coordinator.py``): it asks
where to fetch each blob, copies from peers with the same verified, resumable transfer used for
the hub (byte ranges from several holders at once when there are several), keeps its claim on a hub
download alive, serves its own blobs to peers, and re-registers them with a coordinator that was
restarted. If the coordinator cannot be reached at all, the node carries on alone.

A peer that fails (refuses, does not answer within ``peer_timeout``, errs, sends a wrong range) is
dropped from the transfer at once, its ranges going to the transfer's other peers; once none is
left, the node asks the coordinator again without it, and gets another peer, the hub only when no
peer has the bytes. Whether the failed peer is also forgotten cluster-wide (only when it caused
the failure, never when a local error interrupted the copy) is checked meanwhile, in the background.

With relaying on (the default) a node also serves each blob while it receives it, from its
transfer's partial file, so others can copy from it before it holds the whole blob. Every source,
hub, holder or relay, writes into that same file: a node whose source dies resumes from the next
one with ``Range`` from the bytes it has, never from the start, and the blob is verified against
the hub's checksum before it is published, whichever sources its bytes came from. When it fails,
the source that sent the wrong bytes is blamed, not the one the node resumed from: the transfer
records which source wrote which bytes, and once a whole copy verifies, tells which of them
differed (``partial_file.py``); those peers are forgotten cluster-wide.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
from ray.actor import ActorHandle
from ray.exceptions import RayActorError

from ..config import DownloaderSettings
from ..errors import DownloadError, IntegrityError, OutOfDisk
from ..node.cache_layout import RepoCache
from ..node.listing import RemoteFile
from ..node.partial_file import PartialFile
from ..node.progress import FileProgress
from ..node.ranges import Drop, Source
from ..records import BlobSource
from .coordinator import BlobKey, Claim, coordinator, peer_secret
from .peer import PeerServer

logger = logging.getLogger(__name__)

# transfer(sources, settings, dropped): bring the blob in from those sources, verified, and return the
# URLs of the sources found to have sent wrong bytes on the way (see transfer.py and partial_file.py);
# the sources dropped on the way (URL -> why) land in ``dropped``, whether it succeeds or raises.
Transfer = Callable[[Sequence[Source], DownloaderSettings, dict[str, Drop]], Awaitable[set[str]]]


@dataclass(frozen=True)
class BlobJob:
    """One blob for a node to bring in: where it goes, how to fetch from sources, and the hub."""

    key: BlobKey
    cache: RepoCache
    file: RemoteFile
    hub: Source
    transfer: Transfer
    partial: PartialFile  # the transfer's file: every source writes into it, and it is relayed to peers meanwhile
    progress: FileProgress  # told each source


class ClusterSources:
    def __init__(self, settings: DownloaderSettings, node_id: str, host: str) -> None:
        self.settings = settings
        self.node_id = node_id
        self.secret = peer_secret()
        self.server = PeerServer(host, self.secret, settings.peer_bandwidth or None)
        self._coordinator: ActorHandle | None = None
        self._epoch: str | None = None
        self._exposed: set[Path] = set()
        self._announcing: set[asyncio.Task[None]] = set()
        self._judging: set[asyncio.Task[None]] = set()  # whether dropped peers are to be forgotten

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

    async def obtain(self, job: BlobJob) -> BlobSource:
        """Bring ``job``'s blob into its cache from wherever the coordinator says, the hub as the last resort.

        Returns where the last bytes came from: ``hub``, ``peer``, ``relay`` or ``shared``.
        """
        f, cache = job.file, job.cache
        url = self.blob_url(cache, f)
        relaying = (
            self.server.serving_partial(str(cache.folder.parent), cache.folder.name, f.etag, job.partial)
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
        finally:
            await asyncio.gather(*self._judging, return_exceptions=True)

    async def _obtain(self, job: BlobJob, relay_url: str | None) -> BlobSource:
        key, f, progress = job.key, job.file, job.progress
        tried: list[str] = []
        peers: dict[str, str] = {}  # URL -> node, of every peer this blob was copied from
        while True:
            decision = await self._claim(key, tried, relay_url)
            if decision is None or decision.action == "hub":
                progress.came_from("hub")
                await self._blame(key, f, peers, await self._from_hub(key, job.hub, job.transfer))
                return "hub"
            if decision.action == "shared":
                if job.cache.has_blob(f):
                    progress.came_from("shared")
                    return "shared"
                for node in decision.holders:  # the recorded copy is gone from the shared cache
                    await self._call("forget", key, node)
                continue
            if decision.action == "wait":
                await self._call("wait", key, decision.version, self.settings.stall_timeout * 3)
                tried.clear()  # those still offered answered (the dead were forgotten): worth a new try
                continue
            kind: BlobSource = "relay" if decision.relay else "peer"
            progress.came_from(kind, next(iter(decision.peers)))
            peers.update({url: node for node, url in decision.peers.items()})
            auth = {"Authorization": f"Bearer {self.secret}"}
            sources = [Source(url, auth, kind) for url in decision.peers.values()]
            dropped: dict[str, Drop] = {}
            try:
                blamed = await job.transfer(sources, replace(self.settings, max_attempts=1), dropped)
            except OutOfDisk:
                raise  # ours, not the peer's: no other source has more room
            except DownloadError as e:
                logger.warning("%s: %s copy failed (%s); trying elsewhere", f.path, kind, e.detail)
                # Not told which source failed (a local error, or one source's bytes all wrong): all of them.
                wrong = isinstance(e, IntegrityError)
                self._judge(key, peers, dropped or {s.url: Drop(e.detail, wrong) for s in sources}, tried)
                continue
            self._judge(key, peers, dropped, tried)
            # Shown as its source: a peer that lasted the transfer (the first one offered may have been dropped).
            progress.came_from(kind, next((peers[s.url] for s in sources if s.url not in dropped), None))
            await self._blame(key, f, peers, blamed)
            return kind

    def _judge(self, key: BlobKey, peers: dict[str, str], dropped: dict[str, Drop], tried: list[str]) -> None:
        """Never ask again for these copies (a URL, not a node: a restarted downloader there is a new
        source); in the background, forget each cluster-wide if it is to blame (it sent wrong bytes,
        or it does not answer), so that the fetch goes on from the next source at once."""
        for url, drop in dropped.items():
            tried.append(url)
            task = asyncio.get_running_loop().create_task(self._forget_if_to_blame(key, peers[url], url, drop))
            self._judging.add(task)
            task.add_done_callback(self._judging.discard)

    async def _forget_if_to_blame(self, key: BlobKey, node: str, url: str, drop: Drop) -> None:
        if drop.wrong or not await asyncio.to_thread(self._serves, url):
            logger.warning("%s: peer %s failed (%s); nobody copies from it again", key[1], node[:12], drop.cause)
            await self._call("forget", key, node, url)

    async def _blame(self, key: BlobKey, f: RemoteFile, peers: dict[str, str], blamed: set[str]) -> None:
        """Forget, cluster-wide, the peers whose bytes were found wrong once a whole copy verified."""
        for url in blamed:
            if url in peers:
                logger.warning("%s: peer %s sent wrong bytes; nobody copies from it again", f.path, peers[url][:12])
                await self._call("forget", key, peers[url], url)

    def _serves(self, url: str) -> bool:
        """Whether a peer answers for its blob: a failed copy from one that does was this node's doing.

        Refused or reset connections, time-outs and 401/404 (the blob or the secret is gone) blame
        the peer; a 503 means it is busy, not broken. It gets the stall time-out, not the peer
        time-out the copy had: a busy peer is left for a faster source, but forgotten by the whole
        cluster only when it does not answer at all.
        """
        headers = {"Authorization": f"Bearer {self.secret}", "Range": "bytes=0-0"}
        try:
            status = httpx.get(url, headers=headers, timeout=self.settings.stall_timeout).status_code
        except httpx.TransportError:
            return False
        return status < 400 or status == 503

    async def _from_hub(self, key: BlobKey, hub: Source, transfer: Transfer) -> set[str]:
        keepalive = asyncio.create_task(self._keep_claim(key))
        try:
            return await transfer([hub], self.settings, {})
        finally:
            keepalive.cancel()

    async def _keep_claim(self, key: BlobKey) -> None:
        while True:
            await asyncio.sleep(self.settings.takeover_after_s / 3)
            await self._call("progress", key, self.node_id)

    async def _claim(self, key: BlobKey, tried: list[str], relay_url: str | None) -> Claim | None:
        decision = await self._call(
            "claim", key, self.node_id, tuple(tried), relay_url, self.settings.connections_per_file
        )
        if decision is not None and decision.epoch != self._epoch:
            # A coordinator we have not told about our blobs (new, or restarted), unless a folder's
            # announcement under way is telling it now.
            await asyncio.gather(*self._announcing)
            if decision.epoch != self._epoch:
                await self.announce()
        return decision

    async def _call(self, method: str, *args: object) -> Any:
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
