"""What Serve itself counts, read from the cluster's metrics endpoint: proof of how many replica
calls the gateway made, independent of candle's own bookkeeping."""

from __future__ import annotations

import time

import httpx


def replica_requests(metrics_url: str, app: str) -> float:
    """Requests ``app``'s replicas have taken, as Serve counts them, once the count stands still: replicas
    flush their counts and Ray's agent exports them about once a second, so earlier requests may
    still be on their way."""
    last, deadline = -1.0, time.monotonic() + 60
    while time.monotonic() < deadline:
        lines = httpx.get(metrics_url, timeout=30).text.splitlines()
        count = sum(
            float(line.rsplit(" ", 1)[1])
            for line in lines
            if line.startswith("ray_serve_deployment_request_counter_total{") and f'application="{app}"' in line
        )
        if count == last:
            return count
        last = count
        time.sleep(3)
    raise AssertionError(f"{app}'s request count kept moving for 60 s")
