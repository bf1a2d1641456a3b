"""Scale to zero and back (issue 15) on real Serve: a catalog entry with ``min_replicas: 0`` goes idle,
a request wakes it (whole and streamed), its weights come from the node's cache, and a replica that
cannot start within the cold-start bound gives 503 + ``Retry-After``.

Two gateways front the same model apps: one with the default bound, one whose catalog copy bounds
the cold start at a millisecond, which no replica meets (Serve has not even created the actor then).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from ray import serve

from candle.catalog import Catalog
from candle.demo.hub import LocalHub
from candle.demo.tiny_models import build_tiny_store
from candle.testing import catalog_apps, wait_for_models
from deployments.app import build_gateway_app
from tests.demo_gateways import DEMO, READY_TIMEOUT_S

EMBEDDER, CHAT = "minilm-scale0", "qwen3-scale0"
SCALING = {
    "min_replicas": 0,
    "max_replicas": 1,
    "downscale_delay_s": 1,
    "look_back_period_s": 2,
    "metrics_interval_s": 0.5,
}
IDLE_TIMEOUT_S = 180  # Serve's look-back window must empty, then the downscale delay passes


def scale_to_zero(model: str, name: str, **limits: Any) -> dict[str, Any]:
    spec = DEMO.get(model)
    assert spec is not None
    limits = {**spec.limits.model_dump(), **limits}
    return spec.model_copy(update={"name": name}).model_dump() | {"autoscaling": SCALING, "limits": limits}


CATALOG = {"models": [scale_to_zero("all-minilm-l6-v2", EMBEDDER), scale_to_zero("qwen3-coder-tiny", CHAT)]}
IMPATIENT = {
    "models": [
        scale_to_zero("all-minilm-l6-v2", EMBEDDER, cold_start_timeout_s=0.001),
        scale_to_zero("qwen3-coder-tiny", CHAT, cold_start_timeout_s=0.001),
    ]
}
REPOS = [Catalog.model_validate(CATALOG).get(name).repo_id for name in (EMBEDDER, CHAT)]  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def gateways(serve_base: str, hub_server: LocalHub, hub_store: Path) -> Iterator[tuple[str, str]]:
    """(patient, impatient) base URLs, once both models have started a replica and gone idle.

    Without requests a replica stops right after it starts: "ready" may never show for both at once."""
    build_tiny_store(hub_store, ["minilm", "qwen3"])
    with catalog_apps(CATALOG, "gateway-scale0", "/scale0"):
        impatient = build_gateway_app({"catalog": IMPATIENT})
        serve.run(impatient, name="gateway-scale0-short", route_prefix="/scale0-short", blocking=False)
        try:
            patient, short = f"{serve_base}/scale0", f"{serve_base}/scale0-short"
            wait_for_models(patient, {EMBEDDER: "idle", CHAT: "idle"}, READY_TIMEOUT_S)
            yield patient, short
        finally:
            serve.delete("gateway-scale0-short", _blocking=False)


def idle(base: str) -> None:
    cards = wait_for_models(base, {EMBEDDER: "idle", CHAT: "idle"}, IDLE_TIMEOUT_S)
    assert cards[EMBEDDER]["status"]["reason"] == "scaled to zero; a request starts a replica"


def test_an_idle_model_wakes_on_a_request_from_the_local_cache(gateways: tuple[str, str], hub: LocalHub) -> None:
    patient, _ = gateways
    idle(patient)
    client = openai.OpenAI(base_url=f"{patient}/v1", api_key="unused", max_retries=0, timeout=120)

    vectors = client.embeddings.create(model=EMBEDDER, input=["a cold start"]).data
    stream = client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "hi"}], max_tokens=8, stream=True
    )
    finishes = [chunk.choices[0].finish_reason for chunk in stream if chunk.choices]

    assert len(vectors[0].embedding) == 384
    assert finishes[-1] in ("stop", "length")
    # Verified blobs on the node: the cold starts listed the repos but downloaded nothing.
    assert {repo: hub.stats.bytes_for(repo) for repo in REPOS} == dict.fromkeys(REPOS, 0)
    assert {repo: hub.stats.bodies_for(repo) for repo in REPOS} == {repo: {} for repo in REPOS}


def test_a_replica_that_cannot_start_in_time_is_a_503_with_retry_after(gateways: tuple[str, str]) -> None:
    _, short = gateways
    idle(short)
    embed = httpx.post(f"{short}/v1/embeddings", json={"model": EMBEDDER, "input": "x"}, timeout=60)
    chat = {"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True}
    with httpx.stream("POST", f"{short}/v1/chat/completions", json=chat, timeout=60) as streamed:
        streamed.read()

    for response in (embed, streamed):
        assert response.status_code == 503, response.text
        assert int(response.headers["Retry-After"]) >= 1
        error = json.loads(response.text)["error"]
        assert error["code"] == "model_not_ready" and error["type"] == "service_unavailable"
        assert "no replica started within 0.001s" in error["message"]
        assert error["model_status"]["state"] in ("idle", "loading")
