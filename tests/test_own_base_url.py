"""A chat model's own base URL (``/models/NAME/v1``): its replicas answer OpenAI's API themselves.

The model's app is deployed alone, as serve_config.yaml lays it out, with no gateway that knows it:
whatever answers came from its replicas, one Serve request per HTTP request (Serve's own count).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from ray import serve
from ray.serve.api import RunTarget

from candle.catalog import load_catalog
from candle.demo.tiny_models import TINY_MODELS, build_tiny_store
from candle.testing import wait_for_models
from deployments.app import build_gateway_app, build_model_app
from deployments.routing import own_route_prefix
from tests.cut_streams import assert_leaving_ends_generation, candle_tokens
from tests.serve_counts import replica_requests

MODEL = "qwen3-coder-tiny"
APP = "own-base-url"
KEY = "sk-own-base-url-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_BODY_BYTES = 64 * 1024
CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Write a function."}]


@pytest.fixture(scope="module")
def base(serve_base: str, hub_store: Path) -> Iterator[str]:
    build_tiny_store(hub_store)
    prefix = own_route_prefix(load_catalog("demo").get(MODEL))
    assert prefix == f"/models/{MODEL}"
    settings = {"api_keys": [KEY], "max_body_bytes": MAX_BODY_BYTES}
    app = build_model_app({"catalog": "demo", "model": MODEL, "gateway": settings})
    serve.run(app, name=APP, route_prefix=prefix, blocking=False)
    url = f"{serve_base}{prefix}"
    try:
        wait_for_models(url, {MODEL: "ready"}, 600, headers=AUTH)
        yield url
    finally:
        serve.delete(APP)


@pytest.fixture(scope="module")
def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=120)


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"]), body
    return body["error"]


def test_the_models_own_url_answers_chat_whole_and_streamed(client: openai.OpenAI, ray_cluster: dict[str, str]):
    before = replica_requests(ray_cluster["METRICS_URL"], APP)
    whole = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=12, temperature=0)
    assert whole.model == MODEL and whole.object == "chat.completion"
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.prompt_tokens > 0 and 0 < whole.usage.completion_tokens <= 12
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=CHAT,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    # Two HTTP requests, two requests to the model's replicas: no other Serve hop on the way.
    assert replica_requests(ray_cluster["METRICS_URL"], APP) - before == 2


def test_a_client_leaving_a_stream_ends_its_generation(base: str, ray_cluster: dict[str, str]):
    tokens = candle_tokens(ray_cluster["METRICS_URL"], MODEL)
    assert_leaving_ends_generation(f"{base}/v1/chat/completions", AUTH, MODEL, tokens)


def test_the_models_own_url_answers_completions(client: openai.OpenAI):
    whole = client.completions.create(model=MODEL, prompt=["x = ", "y = "], max_tokens=6, temperature=0)
    assert [c.index for c in whole.choices] == [0, 1] and whole.usage.completion_tokens > 0
    streamed = list(client.completions.create(model=MODEL, prompt="x = ", max_tokens=6, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text


def test_the_models_own_url_lists_only_its_model(client: openai.OpenAI, base: str):
    assert [m.id for m in client.models.list()] == [MODEL]
    card = httpx.get(f"{base}/v1/models/{MODEL}", headers=AUTH).json()
    assert card["capability"] == "text-to-text" and card["status"]["state"] == "ready"
    assert httpx.get(f"{base}/v1/models/other", headers=AUTH).status_code == 404


def test_another_models_name_is_404(client: openai.OpenAI, base: str):
    response = httpx.post(f"{base}/v1/chat/completions", headers=AUTH, json={"model": "gpt-9", "messages": CHAT})
    assert response.status_code == 404
    assert error_of(response)["code"] == "model_not_found" and "gpt-9" in error_of(response)["message"]


def test_the_gateways_guards_stand_before_the_model(base: str):
    assert httpx.get(f"{base}/health").status_code == 200  # open, as the gateway's
    for path in ("/v1/models", "/v1/chat/completions"):
        response = httpx.post(f"{base}{path}", json={}) if "chat" in path else httpx.get(f"{base}{path}")
        assert response.status_code == 401 and error_of(response)["type"] == "authentication_error"
    big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * MAX_BODY_BYTES}]}
    response = httpx.post(f"{base}/v1/chat/completions", headers=AUTH, json=big)
    assert response.status_code == 413 and error_of(response)["code"] == "request_too_large"
    response = httpx.post(f"{base}/v1/chat/completions", headers=AUTH, json={"model": MODEL})
    assert response.status_code == 400 and "messages" in error_of(response)["message"]
    response = httpx.post(
        f"{base}/v1/chat/completions", headers=AUTH, json={"model": MODEL, "messages": CHAT, "max_tokens": 100000}
    )
    assert response.status_code == 400 and "max_tokens" in error_of(response)["message"]


QUEUED = "qwen3-one-queued"
BUDGET_S = 3  # the queue's latency budget: Retry-After, and one queued request at 3 s per request


@pytest.fixture(scope="module")
def one_queued(serve_base: str, hub_store: Path) -> Iterator[dict[str, str]]:
    """A model whose replica works on one request at a time and queues one more per caller, at its own
    URL and behind a gateway of its own."""
    build_tiny_store(hub_store, ["qwen3"])
    entry = {
        "name": QUEUED,
        "capability": "text-to-text",
        "repo_id": TINY_MODELS["qwen3"],
        "max_ongoing_requests": 1,
        "limits": {"queue_latency_budget_s": BUDGET_S, "request_time_s": BUDGET_S, "max_tokens": 256},
        "resources": {"num_cpus": 0.1},
    }
    catalog = {"models": [entry]}
    own = RunTarget(
        build_model_app({"catalog": catalog, "model": QUEUED}), name=QUEUED, route_prefix=f"/models/{QUEUED}"
    )
    gateway = RunTarget(build_gateway_app({"catalog": catalog}), name="gateway-one-queued", route_prefix="/one-queued")
    serve.run_many([own, gateway], wait_for_applications_running=False)
    urls = {"own": f"{serve_base}/models/{QUEUED}", "gateway": f"{serve_base}/one-queued"}
    try:
        for url in urls.values():
            wait_for_models(url, {QUEUED: "ready"}, 600)
        yield urls
    finally:
        serve.delete("gateway-one-queued")
        serve.delete(QUEUED)


@pytest.mark.parametrize("front", ["own", "gateway"])
def test_past_the_models_queue_both_urls_answer_503_with_retry_after(one_queued: dict[str, str], front: str):
    """Past the queue, 503 with the queue's latency budget as Retry-After: the gateway's in OpenAI's
    error shape, Serve's for the model's own URL (its proxy here, HAProxy on the fast path) in Serve's
    words. Every request taken is answered whole."""
    body = {"model": QUEUED, "messages": CHAT, "max_tokens": 256, "temperature": 0, "stream": True}

    def send(_: int) -> httpx.Response:
        with httpx.stream("POST", f"{one_queued[front]}/v1/chat/completions", json=body, timeout=120) as response:
            response.read()
            return response

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(send, range(6)))
    served = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 503]
    assert len(served) + len(refused) == 6, [a.status_code for a in answers]
    # One runs and one queues; Serve may count a second request as queued while it assigns the first.
    assert served and len(refused) >= 4, [a.status_code for a in answers]
    for answer in served:
        assert answer.text.endswith("data: [DONE]\n\n") and '"finish_reason": "length"' in answer.text
    for answer in refused:
        assert answer.headers["Retry-After"] == str(BUDGET_S)
        if front == "gateway":
            assert error_of(answer)["code"] == "overloaded"
        else:
            assert "backpressure" in answer.text
