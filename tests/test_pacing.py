"""Streamed answers merged per interval: nothing lost or reordered, first and last pieces never held."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from candle.catalog import ModelSpec
from candle.contracts import TextChunk, ToolCallDelta
from deployments.replicas.pacing import joined, paced

FINISH = TextChunk("", "stop", prompt_tokens=7, completion_tokens=5)


async def collect(chunks: AsyncIterator[TextChunk]) -> list[TextChunk]:
    return [chunk async for chunk in chunks]


async def test_the_first_piece_leaves_before_the_engine_makes_the_second() -> None:
    received = asyncio.Event()
    out: list[TextChunk] = []

    async def engine() -> AsyncIterator[TextChunk]:
        yield TextChunk("Hel")
        await asyncio.wait_for(received.wait(), 5)  # times out if the first piece was held
        yield TextChunk("lo")
        yield FINISH

    async for chunk in paced(engine(), interval_s=30):
        out.append(chunk)
        received.set()
    assert out == [TextChunk("Hel"), TextChunk("lo", "stop", 7, 5)]


async def test_pieces_within_the_interval_leave_as_one_once_it_is_over() -> None:
    first, merged = asyncio.Event(), asyncio.Event()
    out: list[TextChunk] = []

    async def engine() -> AsyncIterator[TextChunk]:
        yield TextChunk("a")
        await asyncio.wait_for(first.wait(), 5)
        for text in ("b", "c", "d"):
            yield TextChunk(text)
        await asyncio.wait_for(merged.wait(), 5)  # times out unless "bcd" left when the interval ended
        yield TextChunk("e")
        yield FINISH

    async for chunk in paced(engine(), interval_s=0.2):
        out.append(chunk)
        first.set()
        if chunk.text == "bcd":
            merged.set()
    assert [c.text for c in out] == ["a", "bcd", "e"]
    assert out[-1].finish_reason == "stop" and out[-1].completion_tokens == 5


async def test_the_last_piece_is_never_held() -> None:
    out: list[TextChunk] = []
    first, last = asyncio.Event(), asyncio.Event()

    async def engine() -> AsyncIterator[TextChunk]:
        yield TextChunk("a")
        await asyncio.wait_for(first.wait(), 5)
        yield TextChunk("b")  # held: the interval runs for a minute
        await asyncio.sleep(0.05)
        yield FINISH  # ends the wait, though the engine's stream has not ended yet
        await asyncio.wait_for(last.wait(), 5)

    async def read() -> None:
        async for chunk in paced(engine(), interval_s=60):
            out.append(chunk)
            first.set()
            if chunk.finish_reason:
                last.set()

    await asyncio.wait_for(read(), 5)  # not a minute later
    assert out == [TextChunk("a"), TextChunk("b", "stop", 7, 5)]


async def test_an_interval_of_zero_sends_every_piece_as_it_comes() -> None:
    pieces = [TextChunk("a"), TextChunk("b"), TextChunk("", reasoning="r"), FINISH]

    async def engine() -> AsyncIterator[TextChunk]:
        for piece in pieces:
            yield piece

    assert await collect(paced(engine(), interval_s=0)) == pieces


async def test_the_engines_error_comes_after_the_pieces_it_made() -> None:
    async def engine() -> AsyncIterator[TextChunk]:
        yield TextChunk("partial")
        yield TextChunk(" answer")
        raise RuntimeError("engine died")

    out: list[str] = []
    with pytest.raises(RuntimeError, match="engine died"):
        async for chunk in paced(engine(), interval_s=0.05):
            out.append(chunk.text)
    assert "".join(out) == "partial answer"


async def test_closing_the_stream_cancels_the_engines_generation() -> None:
    running, stopped = asyncio.Event(), asyncio.Event()

    async def engine() -> AsyncIterator[TextChunk]:
        yield TextChunk("a")
        try:
            running.set()
            await asyncio.sleep(60)
            yield TextChunk("never")
        finally:
            stopped.set()

    stream = paced(engine(), interval_s=0.05)
    assert (await anext(stream)).text == "a"
    reading = asyncio.ensure_future(anext(stream))
    await asyncio.wait_for(running.wait(), 5)
    assert not stopped.is_set()  # the engine was still generating when the client left
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    await stream.aclose()
    await asyncio.wait_for(stopped.wait(), 5)


def test_tool_call_pieces_join_per_call() -> None:
    first = TextChunk("", tool_calls=(ToolCallDelta(0, "call_1", "add", '{"a": '),))
    then = TextChunk("", tool_calls=(ToolCallDelta(0, arguments="1}"), ToolCallDelta(1, "call_2", "mul", '{"b"')))
    assert joined(first, then).tool_calls == (
        ToolCallDelta(0, "call_1", "add", '{"a": 1}'),
        ToolCallDelta(1, "call_2", "mul", '{"b"'),
    )


def test_nothing_joins_after_the_last_piece() -> None:
    with pytest.raises(ValueError, match="last piece"):
        joined(FINISH, TextChunk("x"))


def _calls(chunks: list[TextChunk]) -> dict[int, tuple[str | None, str | None, str]]:
    """Each tool call whole: id, name and arguments, as a client joins them from the deltas."""
    whole: dict[int, tuple[str | None, str | None, str]] = {}
    for chunk in chunks:
        for call in chunk.tool_calls:
            call_id, name, arguments = whole.get(call.index, (None, None, ""))
            whole[call.index] = (
                call_id or call.id,
                (name or "") + (call.name or "") or None,
                arguments + call.arguments,
            )
    return whole


piece = st.builds(
    TextChunk,
    text=st.text(max_size=3),
    reasoning=st.sampled_from(["", "", "r"]),
    tool_calls=st.lists(
        st.builds(
            ToolCallDelta,
            index=st.integers(0, 2),
            id=st.sampled_from([None, None, "call_1"]),
            name=st.sampled_from([None, None, "add"]),
            arguments=st.text(max_size=3),
        ),
        max_size=2,
        unique_by=lambda c: c.index,
    ).map(tuple),
)


@settings(max_examples=60, deadline=None)
@given(
    pieces=st.lists(st.tuples(piece, st.sampled_from([0.0, 0.0, 0.001, 0.004])), max_size=12),
    interval=st.sampled_from([0.0, 0.002, 0.01]),
)
def test_merging_loses_and_reorders_nothing(pieces: list[tuple[TextChunk, float]], interval: float) -> None:
    async def engine() -> AsyncIterator[TextChunk]:
        for chunk, pause in pieces:
            await asyncio.sleep(pause)
            yield chunk
        yield FINISH

    out = asyncio.run(collect(paced(engine(), interval)))
    sent = [chunk for chunk, _ in pieces]
    assert "".join(c.text for c in out) == "".join(c.text for c in sent)
    assert "".join(c.reasoning for c in out) == "".join(c.reasoning for c in sent)
    assert _calls(out) == _calls(sent)
    assert out[-1].finish_reason == "stop" and (out[-1].prompt_tokens, out[-1].completion_tokens) == (7, 5)
    assert all(c.finish_reason is None for c in out[:-1])
    assert all(len({call.index for call in c.tool_calls}) == len(c.tool_calls) for c in out)
    assert len(out) <= len(sent) + 1


@pytest.mark.parametrize("capability", ["text-embedding", "rerank", "text-to-image", "image-embedding"])
def test_the_catalog_refuses_a_stream_interval_where_nothing_streams(capability: str) -> None:
    entry = {"name": "m", "capability": capability, "repo_id": "o/m", "stream_interval_ms": 20}
    with pytest.raises(ValueError, match="stream_interval_ms paces streamed answers"):
        ModelSpec.model_validate(entry)
    del entry["stream_interval_ms"]
    dumped = ModelSpec.model_validate(entry).model_dump()  # as a replica gets its entry: every field set
    assert ModelSpec.model_validate(dumped).capability == capability


@pytest.mark.parametrize("capability", ["text-to-text", "vision"])
def test_chat_entries_pace_their_streams_every_50_ms_unless_told(capability: str) -> None:
    entry = {"name": "m", "capability": capability, "repo_id": "o/m"}
    assert ModelSpec.model_validate(entry).stream_interval_ms == 50
    assert ModelSpec.model_validate({**entry, "stream_interval_ms": 0}).stream_interval_ms == 0
