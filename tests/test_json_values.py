"""Counting a JSON body's values without parsing it (issue 22, item 2).

The gateway refuses a body of too many values before anything parses it: one 32 MiB body of
2,097,139 ``{"role": "user"}`` messages cost 14.7 s of CPU and 1.6 GB to parse and validate. The
count must be exact for any document, however its strings hide quotes, commas and brackets.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from candle.api.limits import json_values

# Strings full of what a scanner could mistake for structure.
TRICKY = st.text(alphabet=st.sampled_from(list('",[]{}:\\ \t\nab\u00e9\u2028\U0001f600')), max_size=12)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TRICKY
DOCUMENTS = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(TRICKY, inner, max_size=5), max_leaves=60
)


def values_in(document: Any) -> int:
    """The document and every value inside it (object keys are names, not values)."""
    children = document.values() if isinstance(document, dict) else document if isinstance(document, list) else ()
    return 1 + sum(values_in(child) for child in children)


@settings(max_examples=400, deadline=None)
@given(
    document=DOCUMENTS,
    ensure_ascii=st.booleans(),
    indent=st.sampled_from([None, 0, 2]),
    separators=st.sampled_from([None, (",", ":"), (" , ", " : ")]),
)
def test_every_value_is_counted_exactly(document: Any, ensure_ascii: bool, indent: int | None, separators):
    body = json.dumps(document, ensure_ascii=ensure_ascii, indent=indent, separators=separators).encode()
    assert json_values(body, 10**9) == values_in(document)


@settings(max_examples=200, deadline=None)
@given(document=DOCUMENTS, limit=st.integers(0, 80))
def test_counting_stops_past_the_limit(document: Any, limit: int):
    counted = json_values(json.dumps(document).encode(), limit)
    assert (counted > limit) == (values_in(document) > limit)


def test_empty_containers_with_whitespace_inside():
    assert json_values(b'{"a": [ ], "b": {\n}, "c": [ [ ] , { } ]}', 100) == 6


def test_the_issues_body_is_over_the_limit():
    body = b'{"model":"m","messages":[' + b",".join([b'{"role":"user"}'] * 2_097_139) + b"]}"
    assert 32 * 2**20 - 1024 < len(body) <= 32 * 2**20  # the default max_body_bytes, nearly full
    assert json_values(body, 65_536) > 65_536


def test_malformed_bodies_are_counted_without_error():
    for body in (b"", b'"unterminated', b"{{{{", b'"\\', b"]]]", b'["a\\"b", "c'):
        assert json_values(body, 10) >= 0
