"""Load on the demo's API: embedding requests at a fixed concurrency, with bursts of chat streams.

Run by ``benchmarks/load/run.py`` as its own process (``locust --headless``; gevent patches the
interpreter, so nothing imports this file but locust). ``EmbeddingUser``s send one short text each
per request, back to back, until ``--embedding-requests`` have been sent, and locust quits once they
have all been answered; ``ChatStreamUser``s start together and each stream a short chat completion
every ``CHAT_PACING_S`` seconds, so their requests arrive as bursts. Every request's outcome and
latency go to ``--results-json`` when locust quits.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from typing import Any

import gevent
from locust import HttpUser, constant, constant_pacing, events, task
from locust.exception import StopUser

EMBEDDING_MODEL = "all-minilm-l6-v2"
CHAT_MODEL = "qwen3-coder-tiny"
REQUEST_TIMEOUT_S = 120.0  # a request still open after this counts as hung
CHAT_PACING_S = 5.0

_latencies: dict[str, list[float]] = defaultdict(list)
_errors: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
_embeddings_sent = 0
_embeddings_answered = 0
_environment: Any = None


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    parser.add_argument("--embedding-requests", type=int, default=2000)
    parser.add_argument("--results-json", default="load-results.json")


@events.init.add_listener
def _remember(environment: Any, **_: Any) -> None:
    global _environment
    _environment = environment


@events.request.add_listener
def _record(name: str, response_time: float, exception: BaseException | None, **_: Any) -> None:
    global _embeddings_answered
    if name == "embedding":
        _embeddings_answered += 1
        if _embeddings_answered == _environment.parsed_options.embedding_requests:
            gevent.spawn(_environment.runner.quit)  # not from inside a user: quitting stops the users
    if exception is None:
        _latencies[name].append(response_time / 1000)
    else:
        _errors[name][str(exception)[:200]] += 1


@events.quitting.add_listener
def _write(environment: Any, **_: Any) -> None:
    results = {
        name: {"ok_latencies_s": _latencies.get(name, []), "errors": dict(_errors.get(name, {}))}
        for name in sorted({*_latencies, *_errors})
    }
    with open(environment.parsed_options.results_json, "w") as out:
        json.dump(results, out)


def _post(user: HttpUser, path: str, body: dict[str, Any], name: str, stream: bool = False) -> Any:
    """A POST whose outcome the caller decides (``catch_response``), bounded by the hang timeout."""
    return user.client.post(path, json=body, name=name, stream=stream, timeout=REQUEST_TIMEOUT_S, catch_response=True)


class EmbeddingUser(HttpUser):
    fixed_count = 100
    wait_time = constant(0)

    @task
    def embed(self) -> None:
        global _embeddings_sent
        if _embeddings_sent >= self.environment.parsed_options.embedding_requests:
            raise StopUser
        _embeddings_sent += 1
        body = {"model": EMBEDDING_MODEL, "input": f"load test sentence number {_embeddings_sent}"}
        with _post(self, "/v1/embeddings", body, "embedding") as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:120]}")
            elif len(response.json()["data"][0]["embedding"]) != 384:
                response.failure("wrong embedding size")


class ChatStreamUser(HttpUser):
    fixed_count = 10
    wait_time = constant_pacing(CHAT_PACING_S)

    @task
    def stream(self) -> None:
        body = {
            "model": CHAT_MODEL,
            "messages": [{"role": "user", "content": "Write a function."}],
            "max_tokens": 16,
            "stream": True,
        }
        started = time.perf_counter()
        with _post(self, "/v1/chat/completions", body, "chat stream", stream=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:120]}")
                return
            lines = [line for line in response.iter_lines() if line]
            if not lines or lines[-1] != b"data: [DONE]" or any(b'"error"' in line for line in lines):
                response.failure(f"stream did not end cleanly: {lines[-2:]!r}")
                return
            # The stream's whole duration, not just its headers.
            response.request_meta["response_time"] = (time.perf_counter() - started) * 1000
