"""Fields of OpenAI's requests that ask for something candle does not do: refused by name, not ignored.

A client that sets ``logprobs: true`` and gets no log probabilities has a silent bug; a 400 naming
the field tells it at once. A field is refused only when its value asks for non-default behaviour:
SDKs send just what their caller sets, and fields that describe the client (``user``,
``metadata``) or ask for the default (``logprobs: false``, ``n: 1``) keep every SDK working.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic_core import PydanticCustomError

Rule = tuple[str, Callable[[Any], bool], str]  # field, "this value asks for what candle lacks", why


def _set(value: Any) -> bool:
    return value is not None


def _truthy(value: Any) -> bool:
    return bool(value)


def _nonzero(value: Any) -> bool:
    return value not in (None, 0, 0.0)


SHARED: tuple[Rule, ...] = (
    ("logit_bias", _truthy, "logit_bias is not supported"),
    ("presence_penalty", _nonzero, "presence_penalty other than 0 is not supported"),
    ("frequency_penalty", _nonzero, "frequency_penalty other than 0 is not supported"),
    ("service_tier", lambda v: v not in (None, "auto", "default"), "only service_tier 'auto' is served"),
    ("store", _truthy, "candle does not store completions (store: true)"),
)
CHAT: tuple[Rule, ...] = (
    *SHARED,
    ("logprobs", _truthy, "logprobs are not supported"),
    ("top_logprobs", _nonzero, "top_logprobs are not supported"),
    ("audio", _set, "audio output is not supported"),
    ("modalities", lambda v: v is not None and list(v) != ["text"], "only the 'text' modality is served"),
    ("prediction", _set, "predicted outputs are not supported"),
    ("web_search_options", _set, "web search is not supported"),
    # OpenAI's legacy function calling, which tools replaced: "none" (call nothing) asks for the default.
    ("functions", _truthy, "legacy functions are not supported; send them as tools"),
    ("function_call", lambda v: v not in (None, "none"), "legacy function_call is not supported; use tool_choice"),
)
COMPLETIONS: tuple[Rule, ...] = (
    *SHARED,
    ("logprobs", _set, "logprobs are not supported"),
    ("suffix", _truthy, "suffix (fill in the middle) is not supported"),
    ("best_of", lambda v: v not in (None, 1), "best_of other than 1 is not supported"),
    ("echo", _truthy, "echo (the prompt repeated before the completion) is not supported"),
)

RERANK: tuple[Rule, ...] = (
    ("rank_fields", _truthy, "rank_fields is not supported; send each document's text"),
    ("max_chunks_per_doc", _set, "max_chunks_per_doc is not supported; long documents are cut at max_tokens_per_doc"),
)


def refuse_unsupported(data: Any, rules: tuple[Rule, ...]) -> None:
    """Raise a validation error naming the first field of ``data`` that asks for what candle lacks."""
    if not isinstance(data, Mapping):
        return
    for field, asks, why in rules:
        if field in data and asks(data[field]):
            raise PydanticCustomError("unsupported_field", "{why}", {"why": why, "param": field})
