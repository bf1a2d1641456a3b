"""One hub download per cluster: the coordinator tells each node where to get a blob from.

For a blob (repo, etag) a node's downloader asks ``claim``. The answer is one of:

- ``hub``: nobody has it or is fetching it: this node downloads it from the hub (and is recorded
  as the one doing so);
- ``peer``: copy it from these nodes (``peers``): up to ``want`` that hold a verified copy (the
  node fetches ranges from all of them at once), or, with ``relay`` set, one that is still
  receiving it; if one fails, claim again with its URL excluded (a URL, not a node: a downloader
  that restarts serves at a new one, and is a source again);
- ``wait``: another node is downloading it: wait for that (``wait`` with the answer's ``version``,
  so a download that ends between the two calls is not missed), then claim again;
- ``shared``: the cache is shared (``HF_HOME`` on a network filesystem): the blob is already in it,
  written by ``holders`` (a node that finds it missing there forgets them and claims again).

Relays (pipelined copies). A node that claims with a ``relay_url`` serves the blob while it
receives it, so it can be a source before it is a holder: nodes asking while the hub download runs
form a chain (hub -> a -> b -> c ...), each copying what its upstream has written so far, and the
cluster has the blob about when the first node does. The coordinator records, per blob, who copies
from whom, and counts each node's uploads over all blobs: a new node gets the source with the
fewest uploads (a verified holder on a tie), and never one whose own bytes come, through the
chain, from the node asking (no cycles) or from a chain that no longer reaches the hub download or
a holder. With everybody asking at once this is a chain: every uplink carries one copy, the
hub's carries one. When a node dies mid-blob, the first of its downstream nodes to find it gone
(``forget`` with the URL that failed) ends its place in the chain, and its hub download with it:
that node's next claim takes the hub download over, resuming from the bytes it has, and every other
node resumes from a source still fed (the new downloader's chain, or a holder). A node that only
excludes the downloader (its copy stalled, but it answers) waits for it instead: the hub is never
asked twice because a copy was slow. A claim without ``relay_url`` (``CANDLE_DOWNLOAD_RELAY=0``)
is store-and-forward: it waits for the hub download and copies verified blobs only, spread over
their holders.

With a shared cache the first claimant downloads and everybody else waits, then links. The
coordinator holds only soft state: every answer carries its ``epoch``, and a downloader that sees
a new one (the coordinator was restarted) registers its verified blobs again, so the new coordinator
rebuilds its view and no download is lost with the old one. A restarted coordinator also hands out
no hub download for ``takeover_after_s / 2``: downloads still running re-claim their blob with their
next keep-alive (every ``takeover_after_s / 3``), so nobody starts a second one meanwhile. Peers
authenticate with a secret kept in the cluster's GCS key-value store, not in the coordinator, so it
survives restarts too.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Literal

import ray

from . import kv

BlobKey = tuple[str, str, str]  # (repo type, repo id, etag)
NAME = "candle-download-coordinator"


@dataclass(frozen=True)
class Claim:
    """The answer to a node asking where to get a blob (see the module docstring for ``action``)."""

    action: Literal["hub", "peer", "wait", "shared"]
    peers: dict[str, str] = field(default_factory=dict)  # peer: node id -> URL of its copy
    relay: bool = False  # peer: that node is still receiving the blob (its copy is partial)
    holders: tuple[str, ...] = ()  # shared: the nodes recorded as having put it in the shared cache
    node: str | None = None  # wait: the node downloading it (None: one the previous coordinator knew)
    epoch: str = ""  # the coordinator's; a new one means "register your blobs again"
    version: int = 0  # the blob's; ``wait`` returns at once once it has moved past this


@dataclass
class _Blob:
    holders: dict[str, str] = field(default_factory=dict)  # node id -> URL of its verified copy
    downloader: str | None = None  # node fetching it from the hub
    sources: dict[str, tuple[str, ...]] = field(default_factory=dict)  # receiving node -> its sources (none: hub)
    relays: dict[str, str] = field(default_factory=dict)  # receiving node -> URL where it serves what it has so far
    since: float = 0.0
    version: int = 0  # bumped at every settle: a waiter passes the one it saw, so no change is missed
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class DownloadCoordinator:
    """Cluster-wide view of who holds or is fetching each blob (an async Ray actor)."""

    def __init__(
        self, shared_cache: bool = False, takeover_after_s: float = 60.0, restarted: bool | None = None
    ) -> None:
        self.epoch = secrets.token_hex(8)
        self.shared_cache = shared_cache
        self.takeover_after_s = takeover_after_s  # a hub download silent this long is handed to another node
        self._blobs: dict[BlobKey, _Blob] = {}
        self._uploads: Counter[str] = Counter()  # node -> copies it serves now, over all blobs
        if restarted is None:  # None: ask Ray whether this actor is a restart of one that died
            restarted = _is_restarted_actor()
        self._grace_until = time.monotonic() + takeover_after_s / 2 if restarted else 0.0

    async def register(self, node_id: str, holdings: list[tuple[BlobKey, str]]) -> str:
        """A downloader (re)connects with the blobs it holds (key, URL); returns the epoch it joined."""
        for key, url in holdings:
            self._blob(key).holders[node_id] = url
        return self.epoch

    async def claim(
        self,
        key: BlobKey,
        node_id: str,
        exclude: tuple[str, ...] = (),
        relay_url: str | None = None,
        want: int = 1,
    ) -> Claim:
        """Where ``node_id`` gets the blob; with ``relay_url`` it serves it there to others meanwhile.

        ``exclude``: URLs of copies that failed for this node (it is not sent to them again).
        ``want``: how many holders it can copy from at once.
        """
        blob = self._blob(key)
        self._release(blob, node_id)  # asking again: it no longer copies from what it was given before
        decision = self._decide(blob, node_id, exclude, relay_url is not None, want)
        if decision.action in ("hub", "peer"):
            blob.sources[node_id] = tuple(decision.peers)
            for upstream in decision.peers:
                self._uploads[upstream] += 1
            if relay_url is not None:
                blob.relays[node_id] = relay_url
        return replace(decision, epoch=self.epoch, version=blob.version)

    def _decide(self, blob: _Blob, node_id: str, exclude: tuple[str, ...], relay: bool, want: int) -> Claim:
        if self.shared_cache and blob.holders:
            return Claim("shared", holders=tuple(blob.holders))
        # Never with a shared cache: there any holder already answered "shared", and a relay's partial
        # file is the asking node's own partial file (the others wait for it instead).
        candidates = [n for n, url in blob.holders.items() if n != node_id and url not in exclude]
        if relay and not self.shared_cache:
            candidates += [n for n, url in blob.relays.items() if url not in exclude and self._fed(blob, n, node_id)]
        if candidates:
            ranked = sorted(candidates, key=lambda n: (self._uploads[n], n not in blob.holders))
            if ranked[0] in blob.holders:
                chosen = [n for n in ranked if n in blob.holders][: max(1, want)]
                return Claim("peer", peers={n: blob.holders[n] for n in chosen})
            return Claim("peer", peers={ranked[0]: blob.relays[ranked[0]]}, relay=True)
        stale = blob.downloader is not None and time.monotonic() - blob.since > self.takeover_after_s
        if blob.downloader not in (None, node_id) and not stale:  # a dead one was forgotten (see ``forget``)
            return Claim("wait", node=blob.downloader)
        if time.monotonic() < self._grace_until:
            return Claim("wait")  # a download the previous coordinator knew may still run
        blob.downloader, blob.since = node_id, time.monotonic()
        return Claim("hub")

    @staticmethod
    def _fed(blob: _Blob, relay: str, asking: str) -> bool:
        """Whether ``relay``'s bytes come, through its chain, from the hub download or a holder, not from ``asking``."""
        node: str | None = relay
        seen = set()
        while node not in blob.holders:
            if node == asking or node in seen or node not in blob.sources:
                return False
            seen.add(node)
            upstreams = blob.sources[node]
            if not upstreams:
                return blob.downloader == node
            node = upstreams[0]  # a relay copies from one source; several are all holders
        return True

    def _release(self, blob: _Blob, node_id: str) -> None:
        """``node_id`` stops receiving the blob: its source's uplink is free of it, and it relays no more."""
        for upstream in blob.sources.pop(node_id, ()):
            self._uploads[upstream] -= 1
        blob.relays.pop(node_id, None)

    async def progress(self, key: BlobKey, node_id: str) -> None:
        """The hub downloader is alive and moving: keep others from taking over (or, after a restart, re-claim)."""
        blob = self._blob(key)
        if blob.downloader in (None, node_id):
            blob.downloader, blob.since = node_id, time.monotonic()

    async def wait(self, key: BlobKey, version: int, timeout_s: float) -> None:
        """Return once the blob's state is past ``version`` (done or failed since), or after ``timeout_s``."""
        blob = self._blob(key)
        if time.monotonic() < self._grace_until:
            timeout_s = min(timeout_s, self._grace_until - time.monotonic())
        if blob.version == version:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(blob.changed.wait(), timeout_s)

    async def done(self, key: BlobKey, node_id: str, url: str) -> None:
        self._settle(key, node_id).holders[node_id] = url

    async def failed(self, key: BlobKey, node_id: str) -> None:
        self._settle(key, node_id)

    async def forget(self, key: BlobKey, node_id: str, url: str | None = None) -> None:
        """A peer could not serve its copy at ``url`` (gone or broken): stop sending others to it.

        Only that copy is forgotten: a node whose downloader restarted serves at a new URL, and
        keeps the download it claimed again (``None``: any copy, for a shared cache's holders). A
        relay that was the hub downloader took that download with it: it is free for the next
        claim, and the nodes waiting for it ask again now rather than after their time-out.
        """
        blob = self._blob(key)
        if url in (None, blob.holders.get(node_id)):
            blob.holders.pop(node_id, None)
        if url in (None, blob.relays.get(node_id)):
            self._release(blob, node_id)
            if blob.downloader == node_id:
                blob.downloader = None
                self._changed(blob)

    def _blob(self, key: BlobKey) -> _Blob:
        return self._blobs.setdefault(tuple(key), _Blob())  # type: ignore[arg-type]

    def _settle(self, key: BlobKey, node_id: str) -> _Blob:
        blob = self._blob(key)
        self._release(blob, node_id)
        if blob.downloader == node_id:
            blob.downloader = None
        self._changed(blob)
        return blob

    @staticmethod
    def _changed(blob: _Blob) -> None:
        """Wake the nodes waiting on the blob; a wait begun after this returns at once (new version)."""
        blob.version += 1
        blob.changed.set()
        blob.changed = asyncio.Event()


def _is_restarted_actor() -> bool:
    """Whether this process is a Ray actor that Ray restarted (a plain driver or test is not one)."""
    if not ray.is_initialized():
        return False
    context = ray.get_runtime_context()
    return context.get_actor_id() is not None and context.was_current_actor_reconstructed


def coordinator(shared_cache: bool, takeover_after_s: float) -> ray.actor.ActorHandle:
    """The cluster's coordinator, created by the first downloader that needs it (detached, no CPU)."""
    return (
        ray.remote(DownloadCoordinator)  # type: ignore[return-value]  # Ray hints .options().remote() as the class or its handle
        .options(
            name=NAME,
            namespace="candle",
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_concurrency=1000,
            max_restarts=-1,
        )
        .remote(shared_cache, takeover_after_s)
    )


def peer_secret() -> str:
    """The cluster's secret for peer copies: made once, kept in the GCS key-value store."""
    return kv.put_if_absent("candle/peer-secret", secrets.token_urlsafe(32).encode()).decode()
