"""Counts read from the cluster's metrics endpoint once they stand still: proof of how many replica
calls the gateway made (Serve's own count) and of how many tokens the engines generated, independent
of what the client saw."""

from __future__ import annotations

import time

import httpx

from tests.promql import parse_exposition


def settled(metrics_url: str, name: str, **labels: str) -> float:
    """The sum of counter ``name``'s samples whose labels include ``labels``, once it stands still:
    replicas flush their counts and Ray's agent exports them about once a second, so earlier requests
    may still be on their way."""
    wanted = set(labels.items())
    last, deadline = -1.0, time.monotonic() + 60
    while time.monotonic() < deadline:
        series = parse_exposition(httpx.get(metrics_url, timeout=30).text)
        count = sum(value for (n, have), value in series.items() if n == name and wanted <= have)
        if count == last:
            return count
        last = count
        time.sleep(3)
    raise AssertionError(f"{name}{labels} kept moving for 60 s")


def replica_requests(metrics_url: str, app: str) -> float:
    """Requests ``app``'s replicas have taken, as Serve counts them."""
    return settled(metrics_url, "ray_serve_deployment_request_counter_total", application=app)
