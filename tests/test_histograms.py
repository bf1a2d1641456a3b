"""Quantiles read from histogram buckets, as Prometheus reads them, against the exact ones."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from candle.testing.histograms import bucket_index, quantile, within_one_bucket
from deployments.metrics import LATENCY_BUCKETS_S


def buckets_of(samples: list[float], bounds: tuple[float, ...]) -> dict[float, float]:
    """What a Prometheus histogram with ``bounds`` holds after observing ``samples``: cumulative counts."""
    return {le: float(sum(s <= le for s in samples)) for le in (*bounds, math.inf)}


def test_prometheus_interpolation_within_a_bucket():
    # 10 observations, 4 in (0, 1], 6 in (1, 2]: the median's rank 5 is the first of six in (1, 2].
    buckets = {1.0: 4.0, 2.0: 10.0, math.inf: 10.0}
    assert quantile(0.5, buckets) == 1 + (5 - 4) / 6
    assert quantile(0.4, buckets) == 1.0
    assert quantile(1.0, {1.0: 1.0, 2.0: 1.0, math.inf: 2.0}) == 2.0  # +Inf: the highest finite bound
    assert math.isnan(quantile(0.5, {1.0: 0.0, math.inf: 0.0}))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(min_value=1e-4, max_value=400, allow_nan=False), min_size=1, max_size=300),
    st.sampled_from([0.5, 0.9, 0.99]),
)
def test_a_histogram_quantile_lies_in_the_bucket_of_the_exact_one(samples: list[float], q: float):
    """What makes `make load-test`'s check meaningful: the quantile read from the serving metrics'
    buckets lies in the bucket of the exact one (the sample of rank q*N), one above when that sample is
    past the last bound. (A client's percentile interpolates between samples, which with thousands of
    them moves it by far less than a bucket.)"""
    from_buckets = quantile(q, buckets_of(samples, LATENCY_BUCKETS_S))
    exact = float(np.percentile(samples, q * 100, method="inverted_cdf"))
    distance = bucket_index(exact, LATENCY_BUCKETS_S) - bucket_index(from_buckets, LATENCY_BUCKETS_S)
    assert distance == (1 if exact > LATENCY_BUCKETS_S[-1] else 0), (from_buckets, exact)
    assert within_one_bucket(from_buckets, exact, LATENCY_BUCKETS_S)


def test_bucket_index_follows_prometheus_le():
    bounds = (0.005, 0.01, 1.0)
    assert [bucket_index(v, bounds) for v in (0.001, 0.005, 0.0051, 1.0, 7.0)] == [0, 0, 1, 2, 3]
    assert not within_one_bucket(0.001, 1.0, bounds)
