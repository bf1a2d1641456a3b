"""Request fields take the JSON type their schema names, and nothing pydantic could coerce into it.

The OpenAPI schema is the contract clients and the fuzz test read: ``seed`` is an integer, so
``"seed": false`` must be a 400, not a request served with seed 0 (the fuzz test found that one:
pydantic's lax mode reads ``false`` as ``0`` and ``"2"`` as ``2``). An integer where a number is
asked for stays valid: JSON Schema counts it as a number, and clients send ``"temperature": 1``.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from candle.api.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ImageGenerationRequest,
    RerankRequest,
    ScoreRequest,
)

CHAT = (ChatCompletionRequest, {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
COMPLETION = (CompletionRequest, {"model": "m", "prompt": "hi"})
EMBEDDING = (EmbeddingRequest, {"model": "m", "input": "hi"})
IMAGE = (ImageGenerationRequest, {"model": "m", "prompt": "hi"})
RERANK = (RerankRequest, {"model": "m", "query": "q", "documents": ["a", "b"]})
SCORE = (ScoreRequest, {"model": "m", "text_1": "q", "text_2": ["a", "b"]})

INTEGERS = [(*CHAT, "max_tokens"), (*CHAT, "max_completion_tokens"), (*CHAT, "n"), (*CHAT, "seed")]
INTEGERS += [(*COMPLETION, "max_tokens"), (*COMPLETION, "seed"), (*EMBEDDING, "dimensions")]
INTEGERS += [(*IMAGE, "n"), (*IMAGE, "seed"), (*IMAGE, "num_inference_steps")]
INTEGERS += [(*RERANK, "top_n"), (*RERANK, "max_tokens_per_doc"), (*SCORE, "max_tokens_per_doc")]
NUMBERS = [(*CHAT, "temperature"), (*CHAT, "top_p"), (*COMPLETION, "temperature"), (*IMAGE, "guidance_scale")]
BOOLEANS = [(*CHAT, "stream"), (*COMPLETION, "stream"), (*RERANK, "return_documents")]

digits = st.integers(1, 9).map(str)
not_an_integer = st.booleans() | digits | st.floats(1.1, 9.9) | st.lists(st.integers(1, 9), min_size=1, max_size=2)
not_a_number = st.booleans() | digits | st.just("0.5")
not_a_boolean = st.integers(0, 1) | st.sampled_from(["true", "false", "yes", "0", "1"])


def refused(model: type[BaseModel], body: dict[str, Any], field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as error:
        model.model_validate({**body, field: value})
    assert any(e["loc"][:1] == (field,) for e in error.value.errors()), error.value


@pytest.mark.parametrize(("model", "body", "field"), INTEGERS, ids=[f"{m.__name__}.{f}" for m, _, f in INTEGERS])
@given(value=not_an_integer)
def test_integer_fields_refuse_what_is_not_an_integer(model, body, field, value):
    refused(model, body, field, value)


@pytest.mark.parametrize(("model", "body", "field"), NUMBERS, ids=[f"{m.__name__}.{f}" for m, _, f in NUMBERS])
@given(value=not_a_number)
def test_number_fields_refuse_booleans_and_strings(model, body, field, value):
    refused(model, body, field, value)


@pytest.mark.parametrize(("model", "body", "field"), BOOLEANS, ids=[f"{m.__name__}.{f}" for m, _, f in BOOLEANS])
@given(value=not_a_boolean)
def test_boolean_fields_refuse_numbers_and_strings(model, body, field, value):
    refused(model, body, field, value)


def test_the_right_types_pass_and_an_integer_is_a_number():
    chat = ChatCompletionRequest.model_validate({**CHAT[1], "temperature": 1, "top_p": 1, "n": 1, "seed": 7})
    assert (chat.temperature, chat.top_p, chat.seed) == (1.0, 1.0, 7)
    image = ImageGenerationRequest.model_validate({**IMAGE[1], "guidance_scale": 3, "num_inference_steps": 2})
    assert (image.guidance_scale, image.num_inference_steps) == (3.0, 2)
