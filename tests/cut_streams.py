"""A client that leaves in the middle of a stream ends the model's generation, on either chat URL.

Counted by what the server records, not by what the client saw: candle's replicas count a stream's
tokens once it ends (``ray_candle_output_tokens_total``), so a cut stream whose generation went on
would add its whole answer; vLLM counts every token it makes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial

import httpx

from tests.serve_counts import settled

LONG = [{"role": "user", "content": "Count from one to a thousand, one number a line."}]


def leave_after_the_first_piece(chat_url: str, headers: dict[str, str], body: dict) -> None:
    """Stream ``body`` and hang up once a piece of the answer has come, before its end."""
    with httpx.stream("POST", chat_url, headers=headers, json={**body, "stream": True}, timeout=120) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            choice = json.loads(line.removeprefix("data: "))["choices"][0]
            assert choice["finish_reason"] is None, "the answer ended before the client could leave"
            if choice["delta"].get("content"):
                return
    raise AssertionError("the stream ended without a piece of the answer")


def assert_leaving_ends_generation(
    chat_url: str, headers: dict[str, str], model: str, generated: Callable[[], float], slack: int = 0
) -> None:
    """One whole answer, one stream cut after its first piece, one short answer: ``generated`` (a settled
    token count) grows by the two answers and at most ``slack`` tokens of the cut one (what an engine
    made before the cut reached it, where it counts tokens as it makes them)."""
    body = {"model": model, "messages": LONG, "max_tokens": 256, "temperature": 0}
    start = generated()
    whole = httpx.post(chat_url, headers=headers, json=body, timeout=120).json()["usage"]["completion_tokens"]
    assert whole >= 128, f"a {whole}-token answer is too short for a cut to show"
    leave_after_the_first_piece(chat_url, headers, body)
    short = httpx.post(chat_url, headers=headers, json={**body, "max_tokens": 4}, timeout=120).json()
    cut = generated() - start - whole - short["usage"]["completion_tokens"]
    assert 0 <= cut <= slack, f"{cut} tokens of the cut answer (of {whole} uncut) were generated"


def candle_tokens(metrics_url: str, model: str) -> Callable[[], float]:
    """The tokens of ``model``'s answers that ended, as its replicas count them."""
    return partial(settled, metrics_url, "ray_candle_output_tokens_total", model=model)
