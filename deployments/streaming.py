"""Streaming: a replica's chunks as OpenAI's answers, whole or as SSE events.

A ``Run`` starts one generation on a model replica (a streaming handle call); these helpers read
its ``TextChunk``s, turn a replica's failure into the client's error, and frame server-sent events,
reporting an error that arrives after the headers in-band, as OpenAI does.
"""

from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse

from candle.api import responses
from candle.api.errors import APIError
from candle.contracts import TextChunk

from . import metrics
from .http_errors import client_error

Run = Callable[[], Any]  # starts one generation: a streaming DeploymentResponseGenerator of TextChunks


async def call(response: Any) -> Any:
    """The result of a unary replica call, or the client's view of its failure."""
    try:
        return await response
    except Exception as e:
        raise client_error(e) from None


async def chunks(run: Run) -> AsyncIterator[TextChunk]:
    try:
        async for chunk in run():
            yield chunk
    except Exception as e:
        raise client_error(e) from None


async def started(run: Run) -> Run:
    """``run`` already past its first chunk, replayed on its first call: a stream the replica refuses
    before any output (an uncompilable schema) fails here, while the HTTP status can still say so."""
    stream = chunks(run)
    first = await anext(stream, None)

    async def replay() -> AsyncIterator[TextChunk]:
        if first is not None:
            yield first
        async for chunk in stream:
            yield chunk

    fresh = iter([replay()])
    return lambda: next(fresh, None) or run()


async def collect(run: Run, n: int) -> tuple[list[responses.AssistantMessage], int, int]:
    """``n`` whole answers, with the prompt's tokens and all completion tokens."""
    choices: list[responses.AssistantMessage] = []
    prompt_tokens = completion_tokens = 0
    for _ in range(n):
        choice = responses.AssistantMessage()
        async for chunk in chunks(run):
            choice.add(chunk)
            if chunk.finish_reason:
                prompt_tokens = chunk.prompt_tokens
                completion_tokens += chunk.completion_tokens
        choices.append(choice)
    return choices, prompt_tokens, completion_tokens


async def chat_events(
    run: Run, n: int, completion_id: str, model: str, include_usage: bool
) -> AsyncIterator[dict[str, Any]]:
    prompt_tokens = completion_tokens = 0
    for index in range(n):
        yield responses.chat_chunk(completion_id, model, index, {"role": "assistant", "content": ""})
        called_tools = False
        async for chunk in chunks(run):
            called_tools = called_tools or bool(chunk.tool_calls)
            if delta := responses.chat_delta(chunk):
                yield responses.chat_chunk(completion_id, model, index, delta)
            if chunk.finish_reason:
                prompt_tokens, completion_tokens = chunk.prompt_tokens, completion_tokens + chunk.completion_tokens
                finish = responses.finish_reason(chunk.finish_reason, called_tools)
                yield responses.chat_chunk(completion_id, model, index, {}, finish)
    if include_usage:
        yield responses.usage_chunk(completion_id, model, "chat.completion.chunk", prompt_tokens, completion_tokens)


async def completion_events(
    runs: list[Run], completion_id: str, model: str, include_usage: bool
) -> AsyncIterator[dict[str, Any]]:
    prompt_tokens = completion_tokens = 0
    for index, run in enumerate(runs):
        async for chunk in chunks(run):
            if chunk.text or chunk.finish_reason:
                yield responses.completion_chunk(completion_id, model, index, chunk.text, chunk.finish_reason)
            if chunk.finish_reason:
                prompt_tokens += chunk.prompt_tokens
                completion_tokens += chunk.completion_tokens
    if include_usage:
        yield responses.usage_chunk(completion_id, model, "text_completion", prompt_tokens, completion_tokens)


def sse(events: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    async def frames() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield responses.sse(event)
        except APIError as e:  # headers are gone: report in-band, as OpenAI does
            metrics.failed_in_band(e.status)
            yield responses.sse(e.body())
        yield responses.sse("[DONE]")

    return StreamingResponse(frames(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
