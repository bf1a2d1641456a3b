"""Download progress as Prometheus metrics, exported by Ray's metrics agent of each node.

Ray prefixes the names with ``ray_`` and tags every series with the node (``NodeAddress``), so a
Prometheus scraping the cluster sees, per node and model: bytes done and total, the current rate,
the state, and how many verified bytes came from the hub, from peers or from a shared cache.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import get_args

from ray.util.metrics import Counter, Gauge

from candle.contracts import DownloadState, RepoProgressRecord

STATES: tuple[DownloadState, ...] = get_args(DownloadState)


class DownloadMetrics:
    def __init__(self) -> None:
        repo = ("repo_id",)
        self.bytes_done = Gauge("candle_download_bytes_done", "Verified or received bytes of a model", repo)
        self.bytes_total = Gauge("candle_download_bytes_total", "Bytes a model's requested files add up to", repo)
        self.rate = Gauge("candle_download_rate_bytes_per_second", "Current transfer rate of a model", repo)
        self.state = Gauge("candle_download_state", "1 for the model's current download state", ("repo_id", "state"))
        self.source_bytes = Counter(
            "candle_download_source_bytes", "Verified bytes brought in, by where they came from", ("source",)
        )

    def publish(self, records: Iterable[RepoProgressRecord]) -> None:
        """Set the gauges from the downloader's progress (one record per model)."""
        for record in records:
            tags = {"repo_id": record.repo_id}
            self.bytes_done.set(record.bytes_done, tags)
            self.bytes_total.set(record.bytes_total, tags)
            self.rate.set(record.rate, tags)
            for state in STATES:
                self.state.set(1.0 if record.state == state else 0.0, {**tags, "state": state})

    def transferred(self, source: str, size: int) -> None:
        self.source_bytes.inc(size, {"source": source})
