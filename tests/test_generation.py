"""Stop-string handling of streamed generation, independent of any model."""

from __future__ import annotations

import pytest

from candle.engines.chat.generation import StopTrimmer


def feed_all(stops: tuple[str, ...], pieces: list[str]) -> tuple[str, bool]:
    trimmer = StopTrimmer(stops)
    out = "".join(trimmer.feed(p) for p in pieces)
    return out + trimmer.flush(), trimmer.stopped


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        (["hello wor", "ld END more"], "hello world "),
        (["abc", "E", "N", "D", "x"], "abc"),
        (["no stop here"], "no stop here"),
        (["ends with E"], "ends with E"),  # a held-back prefix is released at the end
        (["END"], ""),
    ],
)
def test_stop_string_is_cut_wherever_the_pieces_split_it(pieces, expected):
    assert feed_all(("END",), pieces)[0] == expected


def test_text_that_may_start_a_stop_is_held_back_until_it_cannot():
    trimmer = StopTrimmer(("</s>",))
    assert trimmer.feed("abc<") == "abc"
    assert trimmer.feed("/") == ""
    assert trimmer.feed("x") == "</x"
    assert not trimmer.stopped


def test_earliest_of_several_stops_wins():
    assert feed_all(("b2", "a1"), ["xx a1 yy b2"]) == ("xx ", True)
