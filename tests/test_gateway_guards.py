"""The gateway's guards against hostile requests, end to end on real Ray Serve apps of the demo catalog.

Each test sends what a hostile or careless client would (too many stop strings, text hidden where
the character limit did not look, an unauthenticated body, out-of-range seeds, lone surrogates, a
request that would run for minutes) and checks the answer is a prompt OpenAI-shaped 4xx/503 and
that the models still serve afterwards.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from candle.demo.hub import LocalHub
from tests.demo_gateways import DEMO, demo_gateway

API_KEY = "sk-candle-guards-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_BODY_BYTES = 1_000_000
REQUEST_TIMEOUT_S = 20
MAX_INPUT_CHARS = DEMO.get("qwen3-coder-tiny").limits.max_input_chars
CHAT = [{"role": "user", "content": "Write a function."}]


@pytest.fixture(scope="module")
def api(serve_base: str, hub_server: LocalHub, hub_store: Path) -> Iterator[str]:
    settings = {"api_keys": [API_KEY], "max_body_bytes": MAX_BODY_BYTES, "request_timeout_s": REQUEST_TIMEOUT_S}
    with demo_gateway(serve_base, hub_store, "gateway-guards", "/guards", settings, AUTH) as base:
        yield base


def post(api: str, path: str, body: dict | bytes, timeout: float = 60) -> httpx.Response:
    if isinstance(body, bytes):
        headers = {**AUTH, "Content-Type": "application/json"}
        return httpx.post(f"{api}{path}", content=body, headers=headers, timeout=timeout)
    return httpx.post(f"{api}{path}", json=body, headers=AUTH, timeout=timeout)


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"]), body
    return body["error"]


def assert_serves(api: str) -> None:
    """The text model still answers: nothing a guard refused, or a deadline cut, broke it."""
    response = post(api, "/v1/completions", {"model": "qwen3-coder-tiny", "prompt": "x", "max_tokens": 2})
    assert response.status_code == 200, response.text


# -- item 8: stop ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stop", "needle"),
    [(["a"] * 5, "at most 4"), (["z"] * 1000, "at most 4"), ("s" * 257, "at most 256"), (["ok", "s" * 257], "256")],
)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_stop_strings_are_bounded(api: str, path: str, stop, needle: str):
    body = {"model": "qwen3-coder-tiny", "max_tokens": 2, "stop": stop}
    body.update({"messages": CHAT} if path == "/v1/chat/completions" else {"prompt": "x"})
    response = post(api, path, body)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["param"] == "stop" and needle in error["message"]


def test_four_stop_strings_of_the_maximum_length_are_served(api: str):
    body = {"model": "qwen3-coder-tiny", "prompt": "x", "max_tokens": 2, "stop": ["s" * 256, "t", "u", "v"]}
    assert post(api, "/v1/completions", body).status_code == 200


# -- item 9: every character a model reads counts against max_input_chars --------------------

OVER = MAX_INPUT_CHARS + 1
LONG_TOOL = {"type": "function", "function": {"name": "f", "description": "d" * OVER}}
LONG_CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "a" * OVER}}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"model": "qwen3-coder-tiny", "prompt": "p" * OVER}),
        ("/v1/completions", {"model": "qwen3-coder-tiny", "prompt": ["p" * (OVER // 2), "q" * (OVER // 2 + 1)]}),
        ("/v1/chat/completions", {"model": "qwen3-coder-tiny", "messages": CHAT, "tools": [LONG_TOOL]}),
        (
            "/v1/chat/completions",
            {"model": "qwen3-coder-tiny", "messages": [*CHAT, {"role": "assistant", "tool_calls": [LONG_CALL]}]},
        ),
        ("/v1/chat/completions", {"model": "qwen3-coder-tiny", "messages": [{**CHAT[0], "name": "n" * OVER}]}),
        (
            "/v1/chat/completions",
            {
                "model": "llava-tiny",
                "messages": [{"role": "user", "content": [{"type": "text", "text": "t" * (OVER // 2 + 1)}] * 2}],
            },
        ),
        ("/v1/embeddings", {"model": "all-minilm-l6-v2", "input": "http://" + "h" * OVER}),
        ("/v1/embeddings", {"model": "all-minilm-l6-v2", "input": ["data:image/" + "i" * (OVER // 2)] * 2}),
        ("/v1/images/generations", {"model": "sd3.5-turbo-tiny", "prompt": "p" * OVER}),
    ],
    ids=[
        "completions-prompt",
        "completions-prompts",
        "tool-definitions",
        "tool-call-arguments",
        "message-name",
        "content-parts",
        "embedding-http-text",
        "embedding-data-image-text",
        "image-prompt",
    ],
)
def test_max_input_chars_counts_every_character_a_model_reads(api: str, path: str, body: dict):
    response = post(api, path, {"max_tokens": 2, **body} if "completions" in path else body)
    assert response.status_code == 413, response.text
    error = error_of(response)
    assert error["code"] == "request_too_large" and str(MAX_INPUT_CHARS) in error["message"]


def test_text_inputs_at_the_limit_are_served(api: str):
    body = {"model": "all-minilm-l6-v2", "input": "http://" + "h" * (MAX_INPUT_CHARS - 7)}
    assert post(api, "/v1/embeddings", body).status_code == 200


# -- item 10: the API key, before the body ---------------------------------------------------


def send_headers_only(base: str, path: str, headers: dict[str, str], declared: int) -> tuple[int, bytes]:
    """The gateway's answer (status, body) to a POST that declares ``declared`` body bytes and sends none."""
    url = httpx.URL(base)
    lines = [f"POST {url.path}{path} HTTP/1.1", f"Host: {url.host}:{url.port}", "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in headers.items()] + [f"Content-Length: {declared}", "", ""]
    with socket.create_connection((url.host, url.port), timeout=30) as conn:
        conn.sendall("\r\n".join(lines).encode())
        answer = http.client.HTTPResponse(conn)
        answer.begin()
        return answer.status, answer.read()


def test_the_api_key_is_checked_before_the_body_is_read(api: str):
    status, body = send_headers_only(api, "/v1/embeddings", {}, MAX_BODY_BYTES - 1)
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key", body
    status, body = send_headers_only(api, "/v1/chat/completions", {"Authorization": "Bearer sk-wrong"}, 1000)
    assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error", body


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json", "/v1/models"])
def test_docs_and_schema_are_behind_the_key(api: str, path: str):
    refused = httpx.get(f"{api}{path}")
    assert refused.status_code == 401 and error_of(refused)["type"] == "authentication_error"
    assert httpx.get(f"{api}{path}", headers=AUTH).status_code == 200


def test_health_stays_open(api: str):
    assert httpx.get(f"{api}/health").status_code == 200


# -- item 13: chunked bodies and seeds -------------------------------------------------------


def test_a_chunked_body_over_the_limit_is_413_in_openai_shape(api: str):
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "all-minilm-l6-v2", "input": "'
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b"x" * 65536
        yield b'"}'

    response = httpx.post(
        f"{api}/v1/embeddings", content=chunks(), headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status_code == 413, response.text
    assert error_of(response)["code"] == "request_too_large"


SEED_BODIES = {
    "/v1/chat/completions": {"model": "qwen3-coder-tiny", "messages": CHAT, "max_tokens": 2},
    "/v1/completions": {"model": "qwen3-coder-tiny", "prompt": "x", "max_tokens": 2},
    "/v1/images/generations": {"model": "sd3.5-turbo-tiny", "prompt": "x", "size": "32x32"},
}


@pytest.mark.parametrize("seed", [10**30, 2**63, -(2**63) - 1])
@pytest.mark.parametrize("path", sorted(SEED_BODIES))
def test_seeds_beyond_64_bits_are_400(api: str, path: str, seed: int):
    response = post(api, path, {**SEED_BODIES[path], "seed": seed})
    assert response.status_code == 400, response.text
    assert error_of(response)["param"] == "seed"


@pytest.mark.parametrize("seed", [2**63 - 1, -(2**63)])
@pytest.mark.parametrize("path", sorted(SEED_BODIES))
def test_seeds_at_the_bounds_are_served(api: str, path: str, seed: int):
    assert post(api, path, {**SEED_BODIES[path], "seed": seed}).status_code == 200


# -- item 14: what the fuzzer found, and a deadline for every request ------------------------


@pytest.mark.parametrize("model", ["qwen3-coder-tiny", "llava-tiny"])
def test_lone_surrogates_are_400(api: str, model: str):
    raw = b'{"model": "%s", "max_tokens": 2, "messages": [{"role": "user", "content": "hi \\ud800"}]}' % model.encode()
    response = post(api, "/v1/chat/completions", raw)
    assert response.status_code == 400, response.text
    assert "surrogate" in error_of(response)["message"]
    raw = b'{"model": "all-minilm-l6-v2", "input": ["ok", "\\udfff"]}'
    assert post(api, "/v1/embeddings", raw).status_code == 400
    assert_serves(api)


@pytest.mark.parametrize("model", ["qwen3-coder-tiny", "llava-tiny"])
def test_a_vanishing_temperature_samples_greedily(api: str, model: str):
    greedy = post(api, "/v1/chat/completions", {"model": model, "messages": CHAT, "max_tokens": 8, "temperature": 0})
    tiny = post(api, "/v1/chat/completions", {"model": model, "messages": CHAT, "max_tokens": 8, "temperature": 5e-324})
    assert tiny.status_code == 200, tiny.text
    assert tiny.json()["choices"][0]["message"] == greedy.json()["choices"][0]["message"]


# Far more work than REQUEST_TIMEOUT_S allows: 64 prompts x 4 choices x 256 sampled tokens, one after another.
ENDLESS = {"model": "qwen3-coder-tiny", "prompt": ["x"] * 64, "n": 4, "max_tokens": 256, "temperature": 1.0}


def test_a_request_past_the_deadline_is_503_with_retry_after(api: str):
    response = post(api, "/v1/completions", ENDLESS)
    assert response.status_code == 503, response.text[:300]
    assert int(response.headers["Retry-After"]) >= 1
    error = error_of(response)
    assert error["code"] == "timeout" and f"{REQUEST_TIMEOUT_S}" in error["message"]
    assert_serves(api)


def test_a_stream_past_the_deadline_ends_with_an_error_event_and_done(api: str):
    with httpx.stream("POST", f"{api}/v1/completions", json={**ENDLESS, "stream": True}, headers=AUTH, timeout=60) as r:
        assert r.status_code == 200
        events = [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "timeout"
    assert all("choices" in json.loads(event) for event in events[:-2])
    assert_serves(api)
