"""Serving metrics per model, read back from Ray's Prometheus endpoint after real requests.

The demo catalog's models serve one request or more of every kind through a gateway app of this
module; the test session's Ray exports what the gateway and the replicas recorded
(``tests/conftest.py`` has its agent report every second). Counts are compared before and after,
so what other modules sent to the shared model apps does not matter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from candle.testing.board import concrete, panels, variable_sources
from deployments.metrics import COUNT_BUCKETS, LATENCY_BUCKETS_S
from tests.demo_gateways import DEMO, demo_gateway
from tests.promql import Series, missing
from tests.serve_counts import scrape, total
from tests.test_api import CHAT, data_url

PREFIX = "/metrics-test"


def landed(before: Series, after: Series, name: str, bounds: tuple[float, ...], **labels: str) -> list[float]:
    """The upper bounds of the buckets new observations of ``name`` fell in, from the cumulative counts
    (Ray exports a histogram's _sum from its buckets' midpoints: the buckets are what it knows exactly)."""
    grew = [
        total(after, f"{name}_bucket", **labels, le=str(float(le)))
        - total(before, f"{name}_bucket", **labels, le=str(float(le)))
        for le in bounds
    ]
    return [le for le, n, below in zip(bounds, grew, [0.0, *grew], strict=False) if n > below]


def until(url: str, ready: Callable[[Series], bool], timeout_s: float = 60) -> Series:
    """The first scrape for which ``ready`` holds (Ray's agent exports every second here), or the last one."""
    deadline = time.monotonic() + timeout_s
    while True:
        series = scrape(url)
        if ready(series) or time.monotonic() > deadline:
            return series
        time.sleep(0.5)


@pytest.fixture(scope="module")
def gateway(serve_base: str, hub_store: Path) -> Iterator[str]:
    with demo_gateway(serve_base, hub_store, "gateway-metrics", PREFIX, {}, {}) as base:
        yield base


@pytest.fixture(scope="module")
def client(gateway: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0, timeout=120)


def test_requests_are_counted_by_model_route_and_code(ray_cluster, gateway: str, client: openai.OpenAI):
    url = ray_cluster["METRICS_URL"]
    ok = {"model": "all-minilm-l6-v2", "capability": "text-embedding", "route": "/v1/embeddings", "code": "200"}
    unknown = {"model": "", "route": "/v1/embeddings", "code": "404"}
    before = scrape(url)
    for _ in range(3):
        client.embeddings.create(model="all-minilm-l6-v2", input=["a cat sits on the mat", "a kitten"])
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="x")
    assert httpx.post(f"{gateway}/v1/embeddings", json={"model": "all-minilm-l6-v2"}).status_code == 400
    assert httpx.get(f"{gateway}/v1/no-such-route").status_code == 404
    name = "ray_candle_requests_total"

    def counted(series: Series) -> bool:
        return total(series, name, **ok) - total(before, name, **ok) >= 3 and total(series, name, **unknown) > total(
            before, name, **unknown
        )

    after = until(url, counted)
    assert total(after, name, **ok) - total(before, name, **ok) == 3
    assert total(after, name, **unknown) - total(before, name, **unknown) == 1
    bad = {**ok, "code": "400"}  # refused before its route ran: labelled by the catalog model it named
    assert total(after, name, **bad) - total(before, name, **bad) == 1
    nowhere = {"model": "", "route": "other", "code": "404"}  # never a client's path as a label
    assert total(after, name, **nowhere) - total(before, name, **nowhere) == 1
    durations = "ray_candle_request_duration_seconds_count"
    labels = {k: v for k, v in ok.items() if k != "code"}
    assert total(after, durations, **labels) - total(before, durations, **labels) == 4  # the 400 too
    # The client's own name for an unknown model never becomes a label value.
    assert not any(("model", "no-such-model") in labels for (_, labels) in after)


def test_a_requests_duration_is_what_the_client_waited_at_most(ray_cluster, client: openai.OpenAI):
    url = ray_cluster["METRICS_URL"]
    labels = {"model": "sd3.5-turbo-tiny", "route": "/v1/images/generations"}
    before = scrape(url)
    started = time.monotonic()
    client.images.generate(model="sd3.5-turbo-tiny", prompt="a lighthouse", size="64x32", n=2)
    waited = time.monotonic() - started
    name = "ray_candle_request_duration_seconds"
    image = {"model": "sd3.5-turbo-tiny", "capability": "text-to-image"}
    # The gateway's series and the replica's come from two processes, each exporting on its own clock.
    counts = [(f"{name}_count", labels)] + [
        (f"{h}_count", image)
        for h in ("ray_candle_request_items", "ray_candle_batch_size", "ray_candle_queue_time_seconds")
    ]
    after = until(url, lambda s: all(total(s, c, **lab) > total(before, c, **lab) for c, lab in counts))
    (upper,) = landed(before, after, name, LATENCY_BUCKETS_S, **labels)
    lower = [0.0, *LATENCY_BUCKETS_S][LATENCY_BUCKETS_S.index(upper)]
    assert lower < waited, (upper, waited)  # the gateway's time is the client's at most
    for histogram in ("ray_candle_request_items", "ray_candle_batch_size"):
        assert landed(before, after, histogram, COUNT_BUCKETS, **image) == [2], histogram  # n=2 in one call
    queued = "ray_candle_queue_time_seconds_count"
    assert total(after, queued, **image) - total(before, queued, **image) == 1


def test_text_models_report_first_token_time_per_token_and_tokens(ray_cluster, client: openai.OpenAI):
    url = ray_cluster["METRICS_URL"]
    labels = {"model": "qwen3-coder-tiny", "capability": "text-to-text"}
    before = scrape(url)
    stream = client.chat.completions.create(
        model="qwen3-coder-tiny", messages=CHAT, max_tokens=6, stream=True, stream_options={"include_usage": True}
    )
    usage = next(chunk.usage for chunk in stream if chunk.usage)
    completion = client.completions.create(model="qwen3-coder-tiny", prompt="def add(a, b):", max_tokens=4)
    ttft = "ray_candle_time_to_first_token_seconds_count"
    after = until(url, lambda s: total(s, ttft, **labels) - total(before, ttft, **labels) >= 2)
    assert total(after, ttft, **labels) - total(before, ttft, **labels) == 2
    tpot = "ray_candle_time_per_output_token_seconds_count"
    assert total(after, tpot, **labels) - total(before, tpot, **labels) == 2
    out, read = "ray_candle_output_tokens_total", "ray_candle_input_tokens_total"
    assert total(after, out, **labels) - total(before, out, **labels) == usage.completion_tokens + 4
    expected_in = usage.prompt_tokens + completion.usage.prompt_tokens
    assert total(after, read, **labels) - total(before, read, **labels) == expected_in


def test_embedding_batches_items_and_tokens(ray_cluster, client: openai.OpenAI):
    url = ray_cluster["METRICS_URL"]
    labels = {"model": "clip-vit-tiny", "capability": "image-embedding"}
    before = scrape(url)
    red, blue, green = (data_url(Image.new("RGB", (32, 32), color)) for color in ("red", "blue", "green"))
    client.embeddings.create(model="clip-vit-tiny", input=[red, blue, green])
    items = "ray_candle_request_items"
    after = until(url, lambda s: total(s, f"{items}_count", **labels) > total(before, f"{items}_count", **labels))
    assert landed(before, after, items, COUNT_BUCKETS, **labels) == [4]  # 3 images: the bucket (2, 4]
    assert landed(before, after, "ray_candle_batch_size", COUNT_BUCKETS, **labels) == [4]
    minilm = {"model": "all-minilm-l6-v2", "capability": "text-embedding"}
    read = "ray_candle_input_tokens_total"
    client.embeddings.create(model="all-minilm-l6-v2", input=["a cat sits on the mat"])
    later = until(url, lambda s: total(s, read, **minilm) > total(after, read, **minilm))
    assert total(later, read, **minilm) - total(after, read, **minilm) == 8  # [CLS] a cat sits on the mat [SEP]


def test_every_model_reports_its_cold_start_state_and_replicas(ray_cluster, gateway: str):
    url = ray_cluster["METRICS_URL"]
    names = [m.name for m in DEMO.models]

    def reported(series: Series) -> bool:
        return all(total(series, "ray_candle_model_state", model=n, state="ready") >= 1 for n in names)

    series = until(url, reported)
    for model in DEMO.models:
        labels = {"model": model.name, "capability": model.capability}
        assert total(series, "ray_candle_cold_start_seconds_count", **labels) >= 1, model.name
        assert total(series, "ray_candle_engine_load_seconds_count", **labels) >= 1, model.name
        assert total(series, "ray_candle_model_state", **labels, state="ready") >= 1, model.name
        assert total(series, "ray_candle_model_state", **labels, state="downloading") == 0, model.name
        assert total(series, "ray_candle_replicas", **labels, state="running") >= 1, model.name


def test_every_board_query_reads_series_the_demo_exports(ray_cluster, gateway: str, client: openai.OpenAI):
    """Each query of the committed board, with ``$model`` set to a demo model it is about, names metrics
    exported with the labels it filters and groups on, after one request of each kind of model (vLLM's
    row is checked where vLLM runs, tests/test_vllm_serving.py)."""
    before = scrape(ray_cluster["METRICS_URL"])
    client.embeddings.create(model="all-minilm-l6-v2", input=["one more", "and another"])
    client.images.generate(model="sd3.5-turbo-tiny", prompt="a lighthouse", size="64x32")
    list(client.chat.completions.create(model="qwen3-coder-tiny", messages=CHAT, max_tokens=3, stream=True))
    assert httpx.post(f"{gateway}/v1/embeddings", json={"model": "all-minilm-l6-v2"}).status_code == 400  # an error
    # What the gateway and each kind of replica recorded, exported: each process reports on its own beat.
    grew = {"ray_candle_requests_total": 4, "ray_candle_time_to_first_token_seconds_count": 1}
    grew |= {"ray_candle_request_items_count": 2, "ray_candle_batch_size_count": 2}

    def exported(series: Series) -> bool:
        return all(total(series, n) - total(before, n) >= k for n, k in grew.items()) and any(
            n == "ray_candle_download_peer_upload_rate_bytes_per_second" for n, _ in series
        )

    series = until(ray_cluster["METRICS_URL"], exported)
    for metric, label in variable_sources():  # the model picker lists every demo model
        assert {m.name for m in DEMO.models} <= {dict(labels).get(label) for n, labels in series if n == metric}
    checked = [p for p in panels() if p.row != "vLLM engines"]
    assert len(checked) >= 15
    for panel in checked:
        for expr in panel.exprs:
            gaps = {m.name: missing(concrete(expr, model=m.name), series) for m in DEMO.models}
            assert any(not gap for gap in gaps.values()), f"{panel.title}: {expr} reads nothing: {gaps}"
