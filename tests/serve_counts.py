"""The cluster's metrics endpoint read back: a scrape, a metric's total, and counts once they stand
still, the proof of how many replica calls the gateway made (Serve's own count) and of how many
tokens the engines generated, independent of what the client saw."""

from __future__ import annotations

import time

import httpx

from tests.promql import Series, parse_exposition


def scrape(url: str) -> Series:
    return parse_exposition(httpx.get(url, timeout=30).text)


def total(series: Series, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (over Ray's workers and nodes)."""
    wanted = set(labels.items())
    return sum(value for (n, have), value in series.items() if n == name and wanted <= have)


def settled(metrics_url: str, name: str, **labels: str) -> float:
    """``total`` of counter ``name`` once it stands still: replicas flush their counts and Ray's agent
    exports them about once a second, so earlier requests may still be on their way."""
    last, deadline = -1.0, time.monotonic() + 60
    while time.monotonic() < deadline:
        count = total(scrape(metrics_url), name, **labels)
        if count == last:
            return count
        last = count
        time.sleep(3)
    raise AssertionError(f"{name}{labels} kept moving for 60 s")


def replica_requests(metrics_url: str, app: str) -> float:
    """Requests ``app``'s replicas have taken, as Serve counts them."""
    return settled(metrics_url, "ray_serve_deployment_request_counter_total", application=app)
