"""Pure checks that keep hostile values away from the engines: bodies of too many JSON values,
text they cannot encode, input past the character limit, and temperatures their samplers cannot
divide by.

Pydantic bounds what a field's type can say (seed range, stop count); these cover what spans fields
or needs the model's limits.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from .errors import too_large

# A request body's bytes, and so one image's: the gateway's default (``max_body_bytes``), and what a
# batch job, which has no body, allows one row's image.
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024

# vLLM's sampler: below _SAMPLING_EPS a request is greedy, and positive temperatures under
# _MAX_TEMP are raised to it (logits divided by 5e-324 are inf, and sampling from inf is NaN).
GREEDY_BELOW_TEMPERATURE = 1e-5
MIN_SAMPLING_TEMPERATURE = 1e-2

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_JSON_WHITESPACE = b" \t\r\n"


def sampling_temperature(temperature: float) -> float:
    """The temperature an engine can sample with: 0 (greedy) for vanishing ones, else at least 0.01."""
    if temperature < GREEDY_BELOW_TEMPERATURE:
        return 0.0
    return max(temperature, MIN_SAMPLING_TEMPERATURE)


def unencodable_text(value: Any, path: str = "") -> str | None:
    """The path (``messages.0.content``) of the first string in parsed JSON that is not valid Unicode.

    JSON's ``\\ud800`` escapes parse to lone surrogates, which tokenizers and UTF-8 encoders reject
    deep inside a replica; found here, they are a 400 naming the field.
    """
    if isinstance(value, str):
        if value.isascii():
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
        return None
    items: Iterable[tuple[Any, Any]]
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if (found := unencodable_text(key, path)) or (found := unencodable_text(item, f"{path}.{key}".lstrip("."))):
            return found
    return None


def check_input_chars(count: int, limit: int, param: str) -> None:
    """413 when a request's text for the model is longer than the model's ``max_input_chars``."""
    if count > limit:
        raise too_large(f"{param} is longer than {limit} characters in total (got {count})", param)


def json_values(body: bytes, limit: int) -> int:
    """How many values the JSON document ``body`` holds (itself, and every element and member value
    at any depth), counted without parsing it; past ``limit`` counting may stop, at a larger number.

    Parsing is what a hostile body makes expensive: 2M tiny objects in 32 MiB cost seconds and
    gigabytes to build. This count runs in C (one regex, bytes methods): once strings are cut out,
    every value but the document follows a ``[``, ``{`` or comma, so values are 1 + commas +
    containers - empty containers. The count of a malformed body means nothing: the parser refuses it.
    """
    # Keys and string values are at most two per value: more strings than that settles it.
    most_strings = 2 * limit + 2
    structure, strings = _JSON_STRING.subn(b'""', body, count=most_strings)
    if strings == most_strings:
        return limit + 1
    structure = structure.translate(None, _JSON_WHITESPACE)
    containers = structure.count(b"[") + structure.count(b"{")
    return 1 + structure.count(b",") + containers - structure.count(b"[]") - structure.count(b"{}")
