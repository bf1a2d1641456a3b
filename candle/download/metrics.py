"""Download progress as Prometheus metrics, exported by Ray's metrics agent of each node.

Ray prefixes the names with ``ray_`` and tags every series with the node (``NodeAddress``), so a
Prometheus scraping the cluster sees, per node and model: bytes done and total, the current rate
and how much of it comes from the hub, from peers' verified copies or from relays (peers still
receiving the blob), the state, how many verified bytes came from each source, and the bytes the
node uploaded to peers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import get_args

from ray.util.metrics import Counter, Gauge

from candle.contracts import BlobSource, DownloadState, RepoProgressRecord

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

    def transferred(self, source: str, size: int) -> None:
        self.source_bytes.inc(size, {"source": source})
