"""The gateway's coalescer: concurrent calls to one model leave as lists, each caller gets its own answer.

``send`` here is a plain coroutine standing where the replica's ``embed_many`` is (the coalescer
takes any such function); it records each list and answers when the test lets it, so what waits
and what leaves together is decided by the test, not by timing.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from candle.api.errors import APIError
from deployments.coalescer import Bounds, Coalescer


class Replica:
    """Answers each list with the calls' doubles once ``release`` is set; a call of -1 fails alone."""

    def __init__(self) -> None:
        self.lists: list[list[int]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def send(self, calls: list[int]) -> list[int | Exception]:
        self.lists.append(list(calls))
        await self.release.wait()
        return [ValueError(f"bad {c}") if c == -1 else c * 2 for c in calls]


def coalescer(replica: Replica, max_items: int = 64, in_flight: int = 1, max_queued: int = 100) -> Coalescer:
    return Coalescer(replica.send, Bounds(max_items, in_flight, max_queued, retry_after_s=7), size=lambda c: 1)


def held(**bounds: int) -> tuple[Replica, Coalescer[int, int]]:
    """A replica that answers nothing until released, and a coalescer in front of it."""
    replica = Replica()
    replica.release.clear()
    return replica, coalescer(replica, **bounds)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_calls_arriving_while_a_list_is_out_leave_together():
    replica, coalesce = held()
    first = asyncio.ensure_future(coalesce(1))
    await settle()
    assert replica.lists == [[1]]  # the model was idle: the first call went out at once, alone
    rest = [asyncio.ensure_future(coalesce(n)) for n in range(2, 12)]
    await settle()
    assert replica.lists == [[1]]  # one list out at a time: the others wait for it
    replica.release.set()
    assert await asyncio.gather(first, *rest) == [n * 2 for n in range(1, 12)]
    assert replica.lists == [[1], list(range(2, 12))]


async def test_a_list_carries_at_most_max_items():
    replica, coalesce = held(max_items=4)
    calls = [asyncio.ensure_future(coalesce(n)) for n in range(10)]
    await settle()
    replica.release.set()
    assert await asyncio.gather(*calls) == [n * 2 for n in range(10)]
    assert replica.lists == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]


async def test_a_calls_error_reaches_its_caller_only():
    replica, coalesce = held()
    calls = [asyncio.ensure_future(coalesce(n)) for n in (1, -1, 3)]
    await settle()
    replica.release.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[0] == 2 and results[2] == 6
    assert isinstance(results[1], ValueError) and str(results[1]) == "bad -1"


async def test_a_list_that_fails_whole_fails_each_of_its_callers():
    async def broken(calls: list[int]) -> list[int]:
        raise ConnectionError("replica died")

    coalesce = Coalescer(broken, Bounds(64, 1, 100, 7), size=lambda c: 1)
    results = await asyncio.gather(*(coalesce(n) for n in range(3)), return_exceptions=True)
    assert [str(r) for r in results] == ["replica died"] * 3
    assert coalesce.in_flight == 0  # and the next call still goes out
    with pytest.raises(ConnectionError):
        await coalesce(4)


async def test_a_caller_that_went_away_is_not_sent():
    replica, coalesce = held()
    first = asyncio.ensure_future(coalesce(1))
    await settle()
    gone, kept = asyncio.ensure_future(coalesce(2)), asyncio.ensure_future(coalesce(3))
    await settle()
    gone.cancel()  # its client disconnected, or its deadline passed
    replica.release.set()
    assert await asyncio.gather(first, kept) == [2, 6]
    assert replica.lists == [[1], [3]]


async def test_past_the_queue_bound_a_call_is_refused_with_503_and_retry_after():
    replica, coalesce = held(max_queued=3)
    working = asyncio.ensure_future(coalesce(0))
    await settle()
    queued = [asyncio.ensure_future(coalesce(n)) for n in (1, 2, 3)]
    await settle()
    with pytest.raises(APIError) as refused:
        await coalesce(4)
    assert (refused.value.status, refused.value.code, refused.value.headers()["Retry-After"]) == (
        503,
        "overloaded",
        "7",
    )
    replica.release.set()
    assert await asyncio.gather(working, *queued) == [0, 2, 4, 6]  # nothing queued was lost


async def test_lists_in_flight_are_bounded():
    replica, coalesce = held(max_items=2, in_flight=2)
    calls = [asyncio.ensure_future(coalesce(n)) for n in range(7)]
    await settle()
    assert replica.lists == [[0], [1]]  # two out at once; the rest wait for one of them to come back
    replica.release.set()
    await asyncio.gather(*calls)
    assert replica.lists == [[0], [1], [2, 3], [4, 5], [6]]


@settings(max_examples=60, deadline=None)
@given(
    waves=st.lists(st.lists(st.integers(0, 1000), min_size=1, max_size=12), min_size=1, max_size=6),
    max_items=st.integers(1, 8),
    in_flight=st.integers(1, 3),
)
def test_every_call_gets_its_own_answer_once_whatever_the_arrivals(
    waves: list[list[int]], max_items: int, in_flight: int
):
    """Calls arrive in waves between which lists come back; every caller gets its own answer, every
    call is sent exactly once, no list is larger than max_items and no more than in_flight are out."""

    async def run() -> None:
        out = 0
        most_out = 0
        lists: list[list[int]] = []

        async def send(calls: list[int]) -> list[int]:
            nonlocal out, most_out
            out += 1
            most_out = max(most_out, out)
            lists.append(calls)
            await asyncio.sleep(0)
            out -= 1
            return [c * 2 for c in calls]

        coalesce = Coalescer(send, Bounds(max_items, in_flight, 10_000, 1), size=lambda c: 1)
        pending = []
        for wave in waves:
            pending += [(c, asyncio.ensure_future(coalesce(c))) for c in wave]
            await asyncio.sleep(0)
        for call, future in pending:
            assert await future == call * 2
        assert sorted(c for sent in lists for c in sent) == sorted(c for wave in waves for c in wave)
        assert all(len(sent) <= max_items for sent in lists) and most_out <= in_flight

    asyncio.run(run())
