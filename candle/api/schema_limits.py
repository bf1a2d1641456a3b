"""Bounds on the JSON schemas a request asks to decode by, checked before any engine compiles one.

A grammar backend's compile time does not follow a schema's size: xgrammar took 156 s for 2,000
optional properties (59 KB), and takes seconds for a 46-byte pattern with ``{3000}``. The bounds
hold in the request-to-call step that the gateway and the batch job share, so they hold for every
engine, vLLM's included (it compiles in its own process, where candle cannot stop a compile).
Properties and counted repetitions are summed over the request's schemas, ``response_format``'s
and the tools' parameters that vLLM compiles (``strict`` functions, and every tool a
``tool_choice`` forces); size and nesting bound each schema.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from candle.catalog import Limits

from .errors import APIError, bad_request

# {n}, {m,} and {m,n}: a regex compiler expands the larger count.
_REPEAT = re.compile(r"\{(\d+)(?:,(\d*))?\}")
_HUGE = 10**9  # a count of ten digits or more: past any limit (and int() of thousands of digits is slow)


@dataclass(frozen=True)
class SchemaShape:
    depth: int  # nesting of objects and arrays in the schema document
    properties: int  # entries of every ``properties`` map, at any depth
    repeats: int  # counted repetitions in every ``pattern`` and ``patternProperties`` name, summed


def pattern_repeats(pattern: str) -> int:
    """The counts of ``pattern``'s counted repetitions, summed."""
    total = 0
    for low, high in _REPEAT.findall(pattern):
        count = high or low
        total += int(count) if len(count) < 10 else _HUGE
    return total


def schema_shape(schema: Any) -> SchemaShape:
    """What a schema asks a grammar compiler for. The walk is generic (it also looks into ``enum``
    or ``default`` data, which can only over-count), except that a ``properties`` map's keys are
    names: a property called ``properties`` is one property."""
    depth = properties = repeats = 0
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, list):
            depth = max(depth, level)
            stack.extend((item, level + 1) for item in node)
        elif isinstance(node, dict):
            depth = max(depth, level)
            for key, value in node.items():
                if key in ("properties", "patternProperties") and isinstance(value, dict):
                    if key == "properties":
                        properties += len(value)
                    else:
                        repeats += sum(pattern_repeats(name) for name in value)
                    depth = max(depth, level + 1)
                    stack.extend((sub, level + 2) for sub in value.values())
                else:
                    if key == "pattern" and isinstance(value, str):
                        repeats += pattern_repeats(value)
                    stack.append((value, level + 1))
    return SchemaShape(depth, properties, repeats)


def check_schemas(schemas: Iterable[tuple[str, Any]], limits: Limits) -> None:
    """A 400 naming the limit when the request's ``(param, schema)`` pairs ask for more than the
    model's ``limits`` allow."""
    properties = repeats = 0
    for param, schema in schemas:
        shape = schema_shape(schema)
        if shape.depth > limits.max_schema_depth:
            raise _too_complex(param, f"nesting {shape.depth} deep", "max_schema_depth", limits.max_schema_depth)
        properties += shape.properties
        if properties > limits.max_schema_properties:
            raise _too_complex(param, f"{properties} properties", "max_schema_properties", limits.max_schema_properties)
        repeats += shape.repeats
        if repeats > limits.max_schema_pattern_repeats:
            found = f"{repeats} counted repetitions in patterns"
            raise _too_complex(param, found, "max_schema_pattern_repeats", limits.max_schema_pattern_repeats)
        size = len(json.dumps(schema))  # as the engines get it
        if size > limits.max_schema_bytes:
            raise _too_complex(param, f"{size} bytes", "max_schema_bytes", limits.max_schema_bytes)


def _too_complex(param: str, found: str, limit: str, value: int) -> APIError:
    return bad_request(
        f"The request's JSON schemas (up to {param}) have {found}; this model compiles at most "
        f"{limit} ({value}), a limit of its catalog entry, so that no schema stalls its grammar compiler.",
        param,
        "json_schema_too_complex",
    )
