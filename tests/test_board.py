"""The Grafana board as code: the committed JSON is what the generator writes, and every query is PromQL
about series candle or vLLM export (against a running Serve: tests/test_metrics.py)."""

from __future__ import annotations

import runpy
from pathlib import Path

import yaml

from candle.testing.board import BOARD, panels, variable_sources
from tests.promql import missing, parse_exposition, selectors

GRAFANA = Path(__file__).resolve().parents[1] / "cluster" / "grafana"


def test_the_committed_board_is_what_the_generator_writes():
    render = runpy.run_path(str(GRAFANA / "dashboard.py"))["render"]
    assert BOARD.read_text() == render(), "run `python cluster/grafana/dashboard.py` and commit its output"


def test_every_panel_queries_series_of_candle_or_vllm():
    found = panels()
    assert {p.row for p in found} == {"Model $model", "vLLM engines", "Downloads"}
    for panel in found:
        assert panel.exprs, panel.title
        for expr in panel.exprs:
            names = {s.name for s in selectors(expr.replace("$__rate_interval", "1m").replace("$model", ".*"))}
            assert names and all(n.startswith(("ray_candle_", "ray_vllm_")) for n in names), (panel.title, names)


def test_the_model_picker_lists_every_deployed_model():
    assert variable_sources() == [("ray_candle_model_state", "model")]  # published for idle models too


def test_every_model_panel_is_split_by_model():
    for panel in panels():
        if panel.row == "Model $model":
            assert all('model=~"$model"' in expr for expr in panel.exprs), panel.title


def test_the_provisioning_file_points_grafana_at_the_board():
    (provider,) = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "candle.yml").read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "$CANDLE_GRAFANA_DASHBOARDS"
    assert BOARD.parent == GRAFANA / "dashboards"


def test_a_query_reads_nothing_where_a_name_a_label_or_a_grouping_is_not_exported():
    """The check the board's live tests rely on (tests/test_metrics.py): it must tell a query with data
    from one whose name, label filter or ``by (...)`` has none."""
    series = parse_exposition(
        'ray_candle_requests_total{model="m",route="/v1/embeddings",code="200"} 3.0\n'
        'ray_candle_request_duration_seconds_bucket{model="m",route="/v1/embeddings",le="0.5"} 2.0\n'
    )
    reads = 'sum by (route, code) (rate(ray_candle_requests_total{model=~"m"}[1m]))'
    assert missing(reads, series) == []
    assert (
        missing(
            'histogram_quantile(0.5, sum by (le) (rate(ray_candle_request_duration_seconds_bucket{model="m"}[1m])))',
            series,
        )
        == []
    )
    assert missing(reads.replace("requests_total", "request_total"), series) == ['ray_candle_request_total{model=~"m"}']
    assert missing(reads.replace('model=~"m"', 'model=~"other"'), series) == [
        'ray_candle_requests_total{model=~"other"}'
    ]
    assert missing(reads.replace("route, code", "route, NodeAddress"), series) == ["by (NodeAddress)"]
    assert missing('sum(ray_candle_requests_total{code=~"[45].."})', series)  # a 200 is not an error
