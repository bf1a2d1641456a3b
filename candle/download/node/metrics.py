"""Download progress as Prometheus metrics, exported by Ray's metrics agent of each node.

Ray prefixes the names with ``ray_`` and tags every series with the node (``NodeAddress``), so a
Prometheus scraping the cluster sees, per node and model: bytes done and total, the current rate
and how much of it comes from the hub, from peers' verified copies or from relays (peers still
receiving the blob), the state; per node: how many verified bytes came from each source, how many
bytes were received from each (verified or not: the difference is what failures and mismatches
cost), the connections open now, the sources dropped mid-transfer (by kind, and whether they
failed or sent wrong bytes), the bytes hashed by reading them back from disk (they arrived ahead of
the in-order prefix), and the bytes the node uploaded to peers, in all and per second now (0 on a
node that serves no peer: a counter Ray cannot export before its first increment, a board's upload
panel can read this gauge from the start).
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterable
from typing import get_args

from ray.util.metrics import Counter, Gauge

from ..records import BlobSource, DownloadState, RepoProgressRecord

STATES: tuple[DownloadState, ...] = get_args(DownloadState)
SOURCES: tuple[BlobSource, ...] = get_args(BlobSource)


class DownloadMetrics:
    def __init__(self) -> None:
        repo = ("repo_id",)
        self.bytes_done = Gauge("candle_download_bytes_done", "Verified or received bytes of a model", repo)
        self.bytes_total = Gauge("candle_download_bytes_total", "Bytes a model's requested files add up to", repo)
        self.rate = Gauge("candle_download_rate_bytes_per_second", "Current transfer rate of a model", repo)
        self.state = Gauge("candle_download_state", "1 for the model's current download state", ("repo_id", "state"))
        self.source_rate = Gauge(
            "candle_download_source_rate_bytes_per_second",
            "Current transfer rate of a model, by where the bytes come from",
            ("repo_id", "source"),
        )
        self.source_bytes = Counter(
            "candle_download_source_bytes", "Verified bytes brought in, by where they came from", ("source",)
        )
        self.uploaded = Counter("candle_download_peer_upload_bytes", "Bytes this node uploaded to peers")
        self.received = Counter(
            "candle_download_received_bytes",
            "Bytes received into partial files (verified or not), by source",
            ("source",),
        )
        self.connections = Gauge("candle_download_connections", "Connections this node's transfers hold open now")
        self.dropped = Counter(
            "candle_download_sources_dropped",
            "Sources dropped mid-transfer, by kind and reason (failed: gone, refused, timed out; wrong: bad bytes)",
            ("source", "reason"),
        )
        self.read_back = Counter(
            "candle_download_hash_read_back_bytes", "Bytes hashed from disk: they arrived ahead of the in-order prefix"
        )
        self._seen: Tally[object] = Tally()  # the totals already added to the counters above
        self.upload_rate = Gauge(
            "candle_download_peer_upload_rate_bytes_per_second", "Bytes per second this node uploads to peers now"
        )
        self._sent, self._sent_at = 0, time.monotonic()

    def publish(self, records: Iterable[RepoProgressRecord]) -> None:
        """Set the gauges from the downloader's progress (one record per model)."""
        for record in records:
            tags = {"repo_id": record.repo_id}
            self.bytes_done.set(record.bytes_done, tags)
            self.bytes_total.set(record.bytes_total, tags)
            self.rate.set(record.rate, tags)
            for state in STATES:
                self.state.set(1.0 if record.state == state else 0.0, {**tags, "state": state})
            for source in SOURCES:
                rate = sum(f.rate for f in record.files if f.source == source)
                self.source_rate.set(rate, {**tags, "source": source})

    def uploads(self, sent: int) -> None:
        """The node's peer server has sent ``sent`` bytes since it started: count the new ones, and their rate
        since the last call."""
        now = time.monotonic()
        if sent > self._sent:
            self.uploaded.inc(sent - self._sent)
        self.upload_rate.set(max(0, sent - self._sent) / max(now - self._sent_at, 1e-3))
        self._sent, self._sent_at = sent, now

    def transferred(self, source: str, size: int) -> None:
        self.source_bytes.inc(size, {"source": source})

    def links(
        self,
        open_connections: int,
        received: Tally[BlobSource],
        dropped: Tally[tuple[BlobSource, str]],
        read_back: int,
        uploaded: int,
    ) -> None:
        """Bring the node's running totals (``ranges.Links``, the peer server) into the metrics."""
        self.connections.set(open_connections)
        for source, total in received.items():
            self._add(self.received, ("received", source), total, {"source": source})
        for (source, reason), total in dropped.items():
            self._add(self.dropped, ("dropped", source, reason), total, {"source": source, "reason": reason})
        self._add(self.read_back, "read_back", read_back, {})
        self.uploads(uploaded)

    def _add(self, counter: Counter, key: object, total: int, tags: dict[str, str]) -> None:
        if total > self._seen[key]:
            counter.inc(total - self._seen[key], tags)
            self._seen[key] = total
