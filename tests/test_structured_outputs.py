"""Structured outputs (issue 15): ``response_format`` through the demo gateway with the OpenAI SDK.

The chat model is the demo's tiny random Qwen3-Coder: left to itself it writes noise, so JSON that
parses and fits the schema can only come from constrained decoding. The schema bounds every value
(enums, an integer range, a short string pattern) so the answer ends well inside ``max_tokens``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import openai
import pytest
from pydantic import BaseModel, ConfigDict, Field

from candle.demo.hub import LocalHub
from tests.demo_gateways import demo_gateway

MODEL = "qwen3-coder-tiny"
MESSAGES = [{"role": "user", "content": "Pick a color."}]


class Pick(BaseModel):
    model_config = ConfigDict(extra="forbid")

    color: Literal["red", "green", "blue"]
    count: int = Field(ge=0, le=9)
    ok: bool
    # A pattern, not just maxLength: xgrammar 0.2.9 lets raw control characters (which strict JSON
    # parsers refuse) into strings bounded only by length; a random model finds them.
    tag: str = Field(pattern=r"^[a-z0-9]{0,8}$")


SCHEMA = {"type": "json_schema", "json_schema": {"name": "pick", "schema": Pick.model_json_schema(), "strict": True}}


@pytest.fixture(scope="module")
def client(serve_base: str, hub_server: LocalHub, hub_store: Path) -> Iterator[openai.OpenAI]:
    with demo_gateway(serve_base, hub_store, "gateway-structured", "/structured", {}, {}) as base:
        yield openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)


def test_strict_json_schema_chat_answers_valid_json(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, response_format=SCHEMA, max_tokens=128, seed=7
    )
    assert answer.choices[0].finish_reason == "stop"
    Pick.model_validate_json(answer.choices[0].message.content or "")


def test_strict_json_schema_chat_streamed_answers_valid_json(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, response_format=SCHEMA, max_tokens=128, stream=True
    )
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    Pick.model_validate_json("".join(pieces))


def test_sdk_parse_returns_the_model(client: openai.OpenAI) -> None:
    parsed = client.chat.completions.parse(model=MODEL, messages=MESSAGES, response_format=Pick, max_tokens=128)
    assert isinstance(parsed.choices[0].message.parsed, Pick)


def test_json_schema_on_completions_streamed_and_not(client: openai.OpenAI) -> None:
    fmt = {"response_format": SCHEMA}
    whole = client.completions.create(model=MODEL, prompt="A pick:", max_tokens=128, extra_body=fmt)
    Pick.model_validate_json(whole.choices[0].text)
    stream = client.completions.create(model=MODEL, prompt="A pick:", max_tokens=128, stream=True, extra_body=fmt)
    Pick.model_validate_json("".join(chunk.choices[0].text for chunk in stream if chunk.choices))


def test_json_object_answers_an_object(client: openai.OpenAI) -> None:
    # Any object may hold strings without bound, which a random model never closes; greedy decoding
    # from this prompt closes the object at once (unconstrained, the same model writes noise).
    fmt = {"response_format": {"type": "json_object"}}
    answer = client.completions.create(model=MODEL, prompt="ok", max_tokens=64, temperature=0, extra_body=fmt)
    assert answer.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(answer.choices[0].text), dict)


def test_text_format_is_the_default(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, response_format={"type": "text"}, max_tokens=4
    )
    assert answer.choices[0].finish_reason == "length"


@pytest.mark.parametrize("stream", [False, True])
def test_uncompilable_schema_is_400_naming_the_reason(client: openai.OpenAI, stream: bool) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "string", "pattern": "(?<=a)b"}}}
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, response_format=fmt, stream=stream)
    assert "Lookbehind is not supported" in refused.value.message


@pytest.mark.parametrize("stream", [False, True])
def test_a_schema_past_the_bounds_is_400_before_any_compile(client: openai.OpenAI, stream: bool):
    """1,000 optional properties compile for seconds on this tiny model (2,000 for minutes): refused
    at the gateway, naming the limit, before a replica compiles anything."""
    properties = {f"field_{i:04d}": {"type": "string"} for i in range(1000)}
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "wide", "schema": {"type": "object", "properties": properties}},
    }
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, response_format=fmt, max_tokens=2, stream=stream)
    assert refused.value.param == "response_format"  # type: ignore[attr-defined]
    assert "1000 properties" in refused.value.message and "max_schema_properties" in refused.value.message


def test_a_tools_schema_past_the_bounds_is_400(client: openai.OpenAI):
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string", "pattern": "^(a|b){600}$"} for i in range(2)}}
    tools = [{"type": "function", "function": {"name": "f", "parameters": wide, "strict": True}}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=tools, max_tokens=2)
    assert refused.value.param == "tools[0].function.parameters"  # type: ignore[attr-defined]
    assert "max_schema_pattern_repeats" in refused.value.message
