"""candle's Grafana board, as code: ``python cluster/grafana/dashboard.py`` writes ``dashboards/candle.json``.

Built with grafana-foundation-sdk (Grafana's own dashboard builders, the dev extra pins it) from the
series candle exports through Ray's metrics agent (``ray_candle_*``, ``deployments/metrics.py`` and
``candle/download/node/metrics.py``) and vLLM's (``ray_vllm_*``). One row per model (a Grafana row
repeated over the ``model`` variable: traffic, errors, latency percentiles, time to first token and
per output token, queue, tokens, batches, replicas), a row of vLLM's engine metrics and a cluster row
for the download service (hub against peer bytes, progress per node and model, upload rates).
A test keeps the committed JSON equal to this file's output and checks every query against the
series a running Serve exports.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, common, dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import BarGaugeDisplayMode, StackingMode, VizOrientation
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

OUTPUT = Path(__file__).resolve().parent / "dashboards" / "candle.json"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
MODEL = 'model=~"$model"'
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Chart:
    """A panel: what it shows, in which unit, how (``time`` series, ``stat`` or ``bars``) and how wide."""

    title: str
    unit: str
    queries: tuple[Query, ...]
    kind: str = "time"
    width: int = 8
    stacked: bool = False


def quantiles(metric: str, labels: str, what: str, levels: tuple[float, ...] = (0.5, 0.99)) -> tuple[Query, ...]:
    """``histogram_quantile`` of ``metric``'s buckets at each level, one series each."""
    return tuple(
        Query(
            f"histogram_quantile({level}, sum by (le) (rate({metric}_bucket{{{labels}}}[{RATE}])))",
            f"{what} p{round(level * 100)}",
        )
        for level in levels
    )


def per_second(labels: str, *counters: tuple[str, str]) -> tuple[Query, ...]:
    """Each ``(counter, legend)``'s rate, summed over Ray's workers and nodes."""
    return tuple(Query(f"sum(rate({counter}{{{labels}}}[{RATE}]))", legend) for counter, legend in counters)


def since_start(metric: str, level: float) -> str:
    """A quantile over every observation so far (rare events, such as cold starts, have no recent rate).
    From the buckets: Ray exports a histogram's ``_sum`` from its buckets' midpoints."""
    return f"histogram_quantile({level}, sum by (le) ({metric}_bucket{{{MODEL}}}))"


MODEL_ROW = (
    Chart(
        "Requests by route and code",
        "reqps",
        (Query(f"sum by (route, code) (rate(ray_candle_requests_total{{{MODEL}}}[{RATE}]))", "{{route}} {{code}}"),),
        stacked=True,
    ),
    Chart(
        "Errors (4xx and 5xx)",
        "reqps",
        (Query(f'sum by (code) (rate(ray_candle_requests_total{{{MODEL}, code=~"[45].."}}[{RATE}]))', "{{code}}"),),
        stacked=True,
    ),
    Chart(
        "Latency, gateway to last byte",
        "s",
        quantiles("ray_candle_request_duration_seconds", MODEL, "latency", (0.5, 0.9, 0.99)),
    ),
    Chart(
        "Time to first token",
        "s",
        quantiles("ray_candle_time_to_first_token_seconds", MODEL, "TTFT"),
    ),
    Chart(
        "Time per output token",
        "s",
        quantiles("ray_candle_time_per_output_token_seconds", MODEL, "TPOT"),
    ),
    Chart(
        "Queue time (gateway sent to engine start)",
        "s",
        quantiles("ray_candle_queue_time_seconds", MODEL, "queue"),
    ),
    Chart(
        "Tokens",
        "short",
        per_second(MODEL, ("ray_candle_input_tokens_total", "input/s"), ("ray_candle_output_tokens_total", "output/s")),
    ),
    Chart(
        "Items per request and per batch",
        "short",
        (
            *quantiles("ray_candle_request_items", MODEL, "items per request", (0.5,)),
            *quantiles("ray_candle_batch_size", MODEL, "batch size", (0.5, 0.99)),
        ),
    ),
    Chart(
        "Replicas",
        "short",
        (
            Query(f"max by (state) (ray_candle_replicas{{{MODEL}}})", "{{state}}"),
            Query(f'max(ray_candle_model_state{{{MODEL}, state="idle"}})', "scaled to zero"),
        ),
        stacked=True,
    ),
    Chart(
        "Cold start (median of every replica start)",
        "s",
        (
            Query(since_start("ray_candle_cold_start_seconds", 0.5), "start to ready"),
            Query(since_start("ray_candle_engine_load_seconds", 0.5), "engine load"),
        ),
        kind="stat",
    ),
)

VLLM = 'model_name=~"$model"'
VLLM_ROW = (
    Chart("vLLM time to first token", "s", quantiles("ray_vllm_time_to_first_token_seconds", VLLM, "TTFT")),
    Chart("vLLM inter-token latency", "s", quantiles("ray_vllm_inter_token_latency_seconds", VLLM, "ITL")),
    Chart("vLLM queue time", "s", quantiles("ray_vllm_request_queue_time_seconds", VLLM, "queue")),
    Chart(
        "vLLM requests running and waiting",
        "short",
        (
            Query(f"sum by (model_name) (ray_vllm_num_requests_running{{{VLLM}}})", "{{model_name}} running"),
            Query(f"sum by (model_name) (ray_vllm_num_requests_waiting{{{VLLM}}})", "{{model_name}} waiting"),
        ),
    ),
    Chart(
        "vLLM KV cache use",
        "percentunit",
        (Query(f"max by (model_name) (ray_vllm_kv_cache_usage_perc{{{VLLM}}})", "{{model_name}}"),),
    ),
    Chart(
        "vLLM tokens",
        "short",
        per_second(
            VLLM, ("ray_vllm_prompt_tokens_total", "prompt/s"), ("ray_vllm_generation_tokens_total", "generated/s")
        ),
    ),
)

DOWNLOAD_ROW = (
    Chart(
        "Download progress per node and model",
        "percentunit",
        (
            Query(
                "sum by (NodeAddress, repo_id) (ray_candle_download_bytes_done)"
                " / sum by (NodeAddress, repo_id) (ray_candle_download_bytes_total)",
                "{{NodeAddress}} {{repo_id}}",
            ),
        ),
        kind="bars",
        width=12,
    ),
    Chart(
        "Download rate by source (hub, peer, relay)",
        "Bps",
        (
            Query(
                "sum by (source) (ray_candle_download_source_rate_bytes_per_second)",
                "{{source}} now",
            ),
            Query(
                f"sum by (source) (rate(ray_candle_download_source_bytes_total[{RATE}]))",
                "{{source}} verified",
            ),
        ),
        width=12,
        stacked=True,
    ),
    Chart(
        "Download rate per node",
        "Bps",
        (Query("sum by (NodeAddress) (ray_candle_download_rate_bytes_per_second)", "{{NodeAddress}}"),),
    ),
    Chart(
        "Upload to peers per node",
        "Bps",
        (Query("sum by (NodeAddress) (ray_candle_download_peer_upload_rate_bytes_per_second)", "{{NodeAddress}}"),),
    ),
    Chart(
        "Models downloading, failed",
        "short",
        (
            Query('sum(ray_candle_download_state{state="downloading"})', "downloading"),
            Query('sum(ray_candle_download_state{state="failed"})', "failed"),
        ),
        kind="stat",
    ),
)

ROWS: tuple[tuple[str, tuple[Chart, ...], str | None], ...] = (
    ("Model $model", MODEL_ROW, "model"),
    ("vLLM engines", VLLM_ROW, None),
    ("Downloads", DOWNLOAD_ROW, None),
)


def panel(chart: Chart):
    targets = [
        prometheus.Dataquery().expr(q.expr).legend_format(q.legend).ref_id(chr(ord("A") + i))
        for i, q in enumerate(chart.queries)
    ]
    if chart.kind == "stat":
        built = stat.Panel()
    elif chart.kind == "bars":
        built = (
            bargauge.Panel()
            .display_mode(BarGaugeDisplayMode.GRADIENT)
            .orientation(VizOrientation.HORIZONTAL)
            .min(0)
            .max(1)
        )
    else:
        built = timeseries.Panel().fill_opacity(10 if chart.stacked else 0)
        if chart.stacked:
            built = built.stacking(common.StackingConfig().mode(StackingMode.NORMAL))
    built = built.title(chart.title).unit(chart.unit).datasource(DATASOURCE).height(8).span(chart.width)
    for target in targets:
        built = built.with_target(target)
    return built


def board() -> dict:
    """The board as Grafana's JSON model."""
    built = (
        dashboard.Dashboard("candle: models and downloads")
        .uid("candle-serving")
        .tags(["candle", "ray", "serve"])
        .refresh("30s")
        .time("now-1h", "now")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            dashboard.QueryVariable("model")
            .label("Model")
            .datasource(DATASOURCE)
            .query("label_values(ray_candle_model_state, model)")  # every deployed model, served yet or not
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    )
    for title, charts, repeat in ROWS:
        row = dashboard.Row(title)
        if repeat:
            row = row.repeat(repeat)
        built = built.with_row(row)
        for chart in charts:
            built = built.with_panel(panel(chart))
    return json.loads(json.dumps(built.build(), cls=JSONEncoder))


def render() -> str:
    return json.dumps(board(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(render())
    print(OUTPUT, file=sys.stderr)
