"""A streamed answer's pieces, merged into one message per ``interval`` after the first.

Every piece a replica yields is one Serve message to the gateway and one SSE event to the client:
at 32 streams on 2 cores those hops cost candle ~30 ms of CPU per 64-token answer, which the engine
then lacks (bench_peers' chat side). Pieces that arrive within ``interval`` of the last message
leave together, as one ``TextChunk``; the first piece with output and the last (finish reason,
counts) are never held, so time to first token and the answer's end do not move. Ray Serve LLM
batches its streams the same way (``stream_batching_interval_ms``, 50 ms), as does vLLM itself by
token count (``stream_interval``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import reduce

from candle.contracts import TextChunk, ToolCallDelta

_END = object()  # the engine's stream ended (or failed: its reader task holds the error)


async def paced(chunks: AsyncIterator[TextChunk], interval_s: float) -> AsyncIterator[TextChunk]:
    """``chunks``, those that arrive within ``interval_s`` of the previous message merged into one.

    A reader task pulls the engine's stream as fast as it comes, so the engine never waits on this;
    closing this generator (the client left) cancels the reader, and with it the engine's generation."""
    if interval_s <= 0:
        async for chunk in chunks:
            yield chunk
        return
    loop = asyncio.get_running_loop()
    arrived: asyncio.Queue[object] = asyncio.Queue()
    reader = asyncio.ensure_future(_read(chunks, arrived))
    due: float | None = None  # when the next message may leave; None until output has left
    try:
        while True:
            batch = [await arrived.get()]
            while due is not None and _holdable(batch[-1]) and (left := due - loop.time()) > 0:
                try:
                    batch.append(await asyncio.wait_for(arrived.get(), left))
                except TimeoutError:
                    break
            while _holdable(batch[-1]) and not arrived.empty():
                batch.append(arrived.get_nowait())
            pieces = [chunk for chunk in batch if isinstance(chunk, TextChunk)]
            if pieces:
                chunk = reduce(joined, pieces)
                yield chunk
                if due is not None or chunk.has_output:
                    due = loop.time() + interval_s
            if batch[-1] is _END:
                await reader  # raises what the engine raised, after the pieces it made before
                return
    finally:
        reader.cancel()


async def _read(chunks: AsyncIterator[TextChunk], arrived: asyncio.Queue[object]) -> None:
    try:
        async for chunk in chunks:
            arrived.put_nowait(chunk)
    finally:
        arrived.put_nowait(_END)


def _holdable(item: object) -> bool:
    return isinstance(item, TextChunk) and item.finish_reason is None


def joined(first: TextChunk, then: TextChunk) -> TextChunk:
    """``first`` and the piece after it as one: texts appended, tool-call pieces joined per call (a
    delta names each call once), the finish reason and counts from the later one."""
    if first.finish_reason is not None:
        raise ValueError("nothing follows a stream's last piece")
    calls: dict[int, ToolCallDelta] = {}
    for call in (*first.tool_calls, *then.tool_calls):
        held = calls.get(call.index)
        calls[call.index] = call if held is None else _joined_call(held, call)
    return TextChunk(
        text=first.text + then.text,
        finish_reason=then.finish_reason,
        prompt_tokens=then.prompt_tokens or first.prompt_tokens,
        completion_tokens=then.completion_tokens or first.completion_tokens,
        reasoning=first.reasoning + then.reasoning,
        tool_calls=tuple(calls.values()),
    )


def _joined_call(first: ToolCallDelta, then: ToolCallDelta) -> ToolCallDelta:
    return ToolCallDelta(
        index=first.index,
        id=first.id or then.id,
        name=(first.name or "") + (then.name or "") or None,
        arguments=first.arguments + then.arguments,
    )
