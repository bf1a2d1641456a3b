"""Streaming: a replica's chunks as OpenAI's answers, whole or as SSE events.

A ``Run`` starts one generation: a streaming handle call to a model replica (the gateway), or the
replica's own method (a chat model's own base URL). These helpers read its ``TextChunk``s, turn a
replica's failure into the client's error, and frame server-sent events, reporting an error that
arrives after the headers in-band, as OpenAI does. ``chat_answer`` and ``completion_answer`` are the
whole of a chat or completion route once its model is known, for both fronts.
"""

from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, Protocol, TypeVar

from fastapi.responses import StreamingResponse

from candle.api import calls, responses
from candle.api.calls import ImageAccess
from candle.api.errors import APIError
from candle.api.schemas import ChatCompletionRequest, CompletionRequest, new_id
from candle.catalog import ModelSpec
from candle.contracts import ChatCall, CompletionCall, TextChunk

from . import metrics
from .http_errors import client_error

Run = Callable[[], Any]  # starts one generation: an async iterator of TextChunks
T = TypeVar("T")


class Waits(Protocol):
    """How a route waits for a model's first answer: the gateway bounds the wait while the model has
    no running replica; a replica answering itself is running."""

    def __call__(self, answer: Awaitable[T], /) -> Awaitable[T]: ...


async def now(answer: Awaitable[T]) -> T:
    """``Waits`` where the model runs in this process."""
    return await answer


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


async def chat_answer(
    body: ChatCompletionRequest,
    spec: ModelSpec,
    images: ImageAccess,
    start: Callable[[ChatCall], Any],
    waits: Waits,
) -> Any:
    """A chat completion, whole or as SSE, from ``start`` (which starts a generation of a call)."""
    call = await calls.chat_call(body, spec, images)
    run: Run = partial(start, call)
    completion_id = new_id("chatcmpl")
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        run = await waits(started(run))
        return sse(chat_events(run, body.n, completion_id, spec.name, include_usage))
    choices, prompt_tokens, completion_tokens = await waits(collect(run, body.n))
    return responses.chat_completion(completion_id, spec.name, choices, prompt_tokens, completion_tokens)


async def completion_answer(
    body: CompletionRequest, spec: ModelSpec, start: Callable[[CompletionCall], Any], waits: Waits
) -> Any:
    """A text completion (one generation per prompt and choice), whole or as SSE."""
    runs: list[Run] = [partial(start, call) for call in calls.completion_calls(body, spec)]
    completion_id = new_id("cmpl")
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        runs[0] = await waits(started(runs[0]))
        return sse(completion_events(runs, completion_id, spec.name, include_usage))
    # The first answer wakes a model scaled to zero; the rest find its replica running.
    (first,), prompt_tokens, completion_tokens = await waits(collect(runs[0], 1))
    choices = [first]
    for run in runs[1:]:
        (choice,), p, c = await collect(run, 1)
        choices.append(choice)
        prompt_tokens, completion_tokens = prompt_tokens + p, completion_tokens + c
    return responses.text_completion(completion_id, spec.name, choices, prompt_tokens, completion_tokens)
