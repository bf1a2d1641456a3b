"""Fields that ask for what candle does not do are refused with a 400 naming them (issue 15, item 3).

Silently ignoring ``logprobs: true`` hands a client an answer without what it asked for; the
values that ask for the default, and fields that only describe the client, stay accepted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from candle.demo.hub import LocalHub
from tests.demo_gateways import demo_gateway

MODEL = "qwen3-coder-tiny"
MESSAGES = [{"role": "user", "content": "hi"}]

CHAT_REFUSED: list[tuple[str, Any]] = [
    ("logprobs", True),
    ("top_logprobs", 2),
    ("logit_bias", {"42": 5}),
    ("presence_penalty", 0.5),
    ("frequency_penalty", -1.0),
    ("service_tier", "flex"),
    ("store", True),
    ("audio", {"voice": "alloy", "format": "wav"}),
    ("modalities", ["text", "audio"]),
    ("prediction", {"type": "content", "content": "x"}),
    ("web_search_options", {}),
    # OpenAI's legacy function calling: tools replaced it; ignored, a client's function would never be called.
    ("functions", [{"name": "f", "parameters": {"type": "object"}}]),
    ("function_call", {"name": "f"}),
    ("function_call", "auto"),
]
COMPLETION_REFUSED: list[tuple[str, Any]] = [
    ("logprobs", 0),
    ("suffix", "}"),
    ("best_of", 2),
    ("logit_bias", {"42": 5}),
    ("presence_penalty", 1.0),
    ("frequency_penalty", 1.0),
    ("echo", True),  # the prompt repeated before the completion
]
CHAT_ACCEPTED: dict[str, Any] = {
    "user": "someone",
    "logprobs": False,
    "top_logprobs": 0,
    "parallel_tool_calls": True,
    "store": False,
    "metadata": {"team": "a"},
    "presence_penalty": 0,
    "frequency_penalty": 0.0,
    "service_tier": "auto",
    "modalities": ["text"],
    "logit_bias": {},
    "functions": [],
    "function_call": "none",
}
COMPLETION_ACCEPTED: dict[str, Any] = {
    "user": "someone",
    "best_of": 1,
    "suffix": "",
    "presence_penalty": 0,
    "echo": False,
}


@pytest.fixture(scope="module")
def client(serve_base: str, hub_server: LocalHub, hub_store: Path) -> Iterator[openai.OpenAI]:
    with demo_gateway(serve_base, hub_store, "gateway-unsupported", "/unsupported", {}, {}) as base:
        yield openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.mark.parametrize(("field", "value"), CHAT_REFUSED)
def test_chat_refuses_by_name(client: openai.OpenAI, field: str, value: Any) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2, extra_body={field: value})
    assert refused.value.param == field  # type: ignore[attr-defined]
    assert refused.value.status_code == 400


@pytest.mark.parametrize(("field", "value"), COMPLETION_REFUSED)
def test_completions_refuse_by_name(client: openai.OpenAI, field: str, value: Any) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=2, extra_body={field: value})
    assert refused.value.param == field  # type: ignore[attr-defined]


def test_defaults_and_client_descriptions_are_accepted(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2, extra_body=CHAT_ACCEPTED)
    assert chat.choices[0].finish_reason == "length"
    text = client.completions.create(model=MODEL, prompt="hi", max_tokens=2, extra_body=COMPLETION_ACCEPTED)
    assert text.choices[0].finish_reason == "length"
