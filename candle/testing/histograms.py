"""Quantiles from a Prometheus histogram's buckets, as ``histogram_quantile`` computes them, and which
bucket a value falls in: for checking what the metrics say against what a client measured."""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence


def cumulative(counts: Mapping[float, float]) -> list[tuple[float, float]]:
    """``le`` -> cumulative count (``+Inf`` included), sorted by ``le``."""
    return sorted(counts.items())


def quantile(q: float, buckets: Mapping[float, float]) -> float:
    """Prometheus' ``histogram_quantile(q, ...)`` of cumulative ``buckets`` (``le`` -> count, ``+Inf``
    included): the rank's bucket, interpolated linearly from its lower bound (0 for the first); the
    highest finite bound when the rank falls in ``+Inf``; NaN without observations."""
    points = cumulative(buckets)
    total = points[-1][1] if points else 0.0
    if not points or total == 0 or not math.isinf(points[-1][0]):
        return math.nan
    rank = q * total
    lower, below = 0.0, 0.0
    for le, count in points:
        if count >= rank:
            if math.isinf(le):
                return lower
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


def bucket_index(value: float, bounds: Sequence[float]) -> int:
    """The index of the bucket ``value`` falls in: ``(bounds[i-1], bounds[i]]``, ``len(bounds)`` past the last."""
    return bisect.bisect_left(list(bounds), value)


def within_one_bucket(a: float, b: float, bounds: Sequence[float]) -> bool:
    return abs(bucket_index(a, bounds) - bucket_index(b, bounds)) <= 1
