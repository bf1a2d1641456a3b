"""The committed Grafana board (``cluster/grafana/dashboards/candle.json``) as its panels and queries,
for the tests that check them against exported series and the load test that evaluates them."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

BOARD = Path(__file__).resolve().parents[2] / "cluster" / "grafana" / "dashboards" / "candle.json"


@dataclass(frozen=True)
class Panel:
    row: str
    title: str
    unit: str
    exprs: tuple[str, ...]
    legends: tuple[str, ...]


def panels(board: Path = BOARD) -> list[Panel]:
    """Every panel with queries, in board order, under the title of the row it sits in."""
    found, row = [], ""
    for panel in json.loads(board.read_text())["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
            continue
        targets = panel.get("targets", [])
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        exprs = tuple(t["expr"] for t in targets)
        found.append(Panel(row, panel["title"], unit, exprs, tuple(t.get("legendFormat", "") for t in targets)))
    return found


def concrete(expr: str, model: str = ".*", rate_interval: str = "1m") -> str:
    """``expr`` with the board's variables filled in, as Grafana sends it to Prometheus."""
    return expr.replace("$__rate_interval", rate_interval).replace("$model", model)


def variable_sources(board: Path = BOARD) -> list[tuple[str, str]]:
    """(metric, label) of each ``label_values(metric, label)`` variable: where the board's pickers look."""
    found = []
    for variable in json.loads(board.read_text())["templating"]["list"]:
        if match := re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable.get("query", "")):
            found.append((match[1], match[2]))
    return found
