"""The gateway fuzzed from its own OpenAPI schema with schemathesis, against the live HTTP server.

Bodies are generated from ``/openapi.json`` (valid ones, and invalid ones schemathesis derives from
the schema) per route, with ``model`` pinned to the demo models that serve each route, so requests reach the
tiny models instead of stopping at a 404. Every answer to a valid body must be a success or an
OpenAI-shaped 4xx, or a 503 that says when to come back; every invalid body must be refused with an
OpenAI-shaped 400 (413 where a size limit comes first); every request must answer (the gateway's deadline bounds the
slow ones); and the gateway must serve normally afterwards. Examples per route are few and the
deadline is short, so the module stays within a few minutes on two cores.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode

from candle.demo.hub import LocalHub
from tests.demo_gateways import demo_gateway

MODELS = {
    "/v1/chat/completions": ["qwen3-coder-tiny", "llava-tiny"],
    "/v1/completions": ["qwen3-coder-tiny"],
    "/v1/embeddings": ["all-minilm-l6-v2", "clip-vit-tiny"],
    "/v1/images/generations": ["sd3.5-turbo-tiny"],
    "/v1/rerank": ["bge-reranker-tiny"],
    "/v1/score": ["bge-reranker-tiny"],
}
REQUEST_TIMEOUT_S = 10  # the gateway's deadline: a generated request asking for minutes of work gets a 503
CLIENT_TIMEOUT_S = 120  # far past the deadline: a request still unanswered by then never answers
MAX_EXAMPLES = 25


@pytest.fixture(scope="module")
def fuzzed(serve_base: str, hub_server: LocalHub, hub_store: Path) -> Iterator[str]:
    settings = {"request_timeout_s": REQUEST_TIMEOUT_S, "max_body_bytes": 1_000_000}
    with demo_gateway(serve_base, hub_store, "gateway-fuzz", "/fuzz", settings, {}) as base:
        yield base


@pytest.fixture(scope="module")
def gateway_schema(fuzzed: str) -> Any:
    return schemathesis.openapi.from_url(f"{fuzzed}/openapi.json")


def assert_openai_answer(response: Any, mode: GenerationMode) -> None:
    """For a valid body: 2xx, or a 4xx / 503-with-Retry-After (limits, load) whose body is
    ``{"error": {message, type, param, code}}``. For an invalid one: a 400 (or a 413 where a limit
    speaks first) in that shape, never a success nor a 503."""
    status = response.status_code
    if mode is GenerationMode.NEGATIVE:
        assert status in (400, 413), f"invalid input answered with HTTP {status}: {response.text[:500]}"
    elif status < 300:
        return
    retry_after = "retry-after" in {name.lower() for name in response.headers}  # schemathesis lower-cases names
    assert status < 500 or (status == 503 and retry_after), f"HTTP {status}: {response.text}"
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) and set(body) == {"error"} else None
    assert isinstance(error, dict) and {"message", "type", "param", "code"} <= set(error), (
        f"HTTP {status} with a body that is not OpenAI's error shape: {response.text[:500]}"
    )


FUZZED = [
    *[("GET", path, GenerationMode.POSITIVE) for path in ("/health", "/v1/models", "/v1/models/{name}")],
    *[("POST", path, mode) for path in MODELS for mode in GenerationMode],
]


@pytest.mark.parametrize(("method", "path", "mode"), FUZZED, ids=[f"{m} {p} {g.value}" for m, p, g in FUZZED])
def test_every_answer_is_a_success_or_an_openai_error(
    gateway_schema: Any, fuzzed: str, method: str, path: str, mode: GenerationMode
):
    """Valid bodies from the schema and invalid ones derived from it, ``model`` pinned to a served model."""

    @given(case=gateway_schema[path][method].as_strategy(mode), model=st.sampled_from(MODELS.get(path, [""])))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: it could replay slow requests for minutes
        suppress_health_check=list(HealthCheck),
    )
    def answers(case: Case, model: str) -> None:
        # Only a string ``model`` is pinned: an invalid one (a number, or none) may be the case's fault.
        if model and isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
            case.body["model"] = model
        assert_openai_answer(case.call(base_url=fuzzed, timeout=CLIENT_TIMEOUT_S), mode)

    answers()


def test_the_gateway_serves_after_fuzzing(fuzzed: str):
    assert httpx.get(f"{fuzzed}/health").status_code == 200
    calls = {
        "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        "/v1/completions": {"prompt": "x", "max_tokens": 2},
        "/v1/embeddings": {"input": "hello"},
        "/v1/images/generations": {"prompt": "x", "size": "32x32"},
        "/v1/rerank": {"query": "x", "documents": ["a", "b"]},
        "/v1/score": {"text_1": "x", "text_2": ["a", "b"]},
    }
    for path, models in MODELS.items():
        for model in models:
            response = httpx.post(f"{fuzzed}{path}", json={"model": model, **calls[path]}, timeout=CLIENT_TIMEOUT_S)
            assert response.status_code == 200, (model, response.text)
