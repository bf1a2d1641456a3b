"""The series a PromQL query reads, checked against a scrape: does every selector name a metric that is
exported with the labels the selector filters on? (promql-parser parses the query as Prometheus does.)"""

from __future__ import annotations

import re
from collections.abc import Iterator

import promql_parser
from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]
Series = dict[tuple[str, Labels], float]
WRAPPERS = (promql_parser.AggregateExpr, promql_parser.ParenExpr, promql_parser.UnaryExpr, promql_parser.SubqueryExpr)


def parse_exposition(text: str) -> Series:
    """Every sample of a Prometheus text exposition: (name, labels) -> value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def selectors(expr: str) -> list[promql_parser.VectorSelector]:
    """The vector selectors of ``expr``, however deep in functions, aggregations and operators."""
    return list(_walk(promql_parser.parse(expr)))


def _walk(node: object) -> Iterator[promql_parser.VectorSelector]:
    if isinstance(node, promql_parser.VectorSelector):
        yield node
    elif isinstance(node, promql_parser.MatrixSelector):
        yield node.vector_selector
    elif isinstance(node, promql_parser.BinaryExpr):
        yield from _walk(node.lhs)
        yield from _walk(node.rhs)
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            yield from _walk(arg)
    elif isinstance(node, WRAPPERS):
        yield from _walk(node.expr)


def _matches(matcher: promql_parser.Matcher, labels: dict[str, str]) -> bool:
    value = labels.get(matcher.name, "")  # an absent label reads as empty, as in Prometheus
    op = matcher.op
    if op == promql_parser.MatchOp.Equal:
        return value == matcher.value
    if op == promql_parser.MatchOp.NotEqual:
        return value != matcher.value
    found = re.fullmatch(matcher.value, value) is not None
    return found if op == promql_parser.MatchOp.Re else not found


def selected(selector: promql_parser.VectorSelector, series: Series) -> list[Labels]:
    """The labels of every exported series ``selector`` picks."""
    return [
        labels
        for name, labels in series
        if name == selector.name and all(_matches(m, dict(labels)) for m in selector.matchers.matchers)
    ]


def _groupings(node: object) -> Iterator[promql_parser.AggregateExpr]:
    """The ``by (...)`` aggregations of ``node``, however deep."""
    modifier = getattr(node, "modifier", None) if isinstance(node, promql_parser.AggregateExpr) else None
    if modifier is not None and modifier.type == promql_parser.AggModifierType.By:
        yield node
    children = {
        promql_parser.BinaryExpr: lambda n: (n.lhs, n.rhs),
        promql_parser.Call: lambda n: n.args,
    }.get(type(node), lambda n: (n.expr,) if isinstance(n, WRAPPERS) else ())
    for child in children(node):
        yield from _groupings(child)


def missing(expr: str, series: Series) -> list[str]:
    """What ``expr`` reads that is not exported: selectors that pick no series, and labels a ``by (...)``
    groups on that none of the series under it carries (a legend or split by them would be empty).
    Empty when the query has data to read, split as it says."""
    gaps = [str(s) for s in selectors(expr) if not selected(s, series)]
    for aggregation in _groupings(promql_parser.parse(expr)):
        under = [labels for s in _walk(aggregation.expr) for labels in selected(s, series)]
        carried = {name for labels in under for name, _ in labels}
        gaps += [f"by ({label})" for label in aggregation.modifier.labels if under and label not in carried]
    return gaps
