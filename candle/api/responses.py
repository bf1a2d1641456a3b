"""OpenAI response bodies and SSE framing, built from what the engines return."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np

from .schemas import now, usage


def sse(payload: dict[str, Any] | str) -> str:
    """One server-sent event; ``[DONE]`` ends OpenAI streams."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def chat_chunk(
    completion_id: str, model: str, index: int, delta: dict[str, Any], finish_reason: str | None = None
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": now(),
        "model": model,
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def completion_chunk(completion_id: str, model: str, index: int, text: str, finish_reason: str | None = None):
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": now(),
        "model": model,
        "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}],
    }


def usage_chunk(completion_id: str, model: str, obj: str, prompt_tokens: int, completion_tokens: int):
    return {
        "id": completion_id,
        "object": obj,
        "created": now(),
        "model": model,
        "choices": [],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_completion(
    completion_id: str, model: str, choices: list[tuple[str, str]], prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """``choices``: (text, finish_reason) per choice."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish,
            }
            for i, (text, finish) in enumerate(choices)
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def text_completion(
    completion_id: str, model: str, choices: list[tuple[str, str]], prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": now(),
        "model": model,
        "choices": [
            {"index": i, "text": text, "logprobs": None, "finish_reason": finish}
            for i, (text, finish) in enumerate(choices)
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def embeddings(model: str, vectors: np.ndarray, prompt_tokens: int, encoding_format: str) -> dict[str, Any]:
    def encode(vector: np.ndarray) -> list[float] | str:
        if encoding_format == "base64":  # little-endian float32, as OpenAI encodes it
            return base64.b64encode(vector.astype("<f4").tobytes()).decode()
        return vector.astype(float).tolist()

    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def images(pngs: list[bytes]) -> dict[str, Any]:
    return {"created": now(), "data": [{"b64_json": base64.b64encode(png).decode()} for png in pngs]}
