"""The Grafana board evaluated on the demo: Prometheus scrapes the demo's metrics endpoint during the
load test, then every query of ``cluster/grafana/dashboards/candle.json`` is evaluated over the run
(``$model`` = all models, as the board opens) and drawn into a picture of the board.

Needs the ``prometheus`` binary (Debian's ``prometheus`` package); ``benchmarks/load/run.py`` uses it
when it is on the PATH. The picture is matplotlib's drawing of Prometheus' answers, one panel per
board panel, in the board's order and titles: what Grafana would show, without running Grafana.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from candle.testing import free_port
from candle.testing.board import Panel, concrete, panels

SCRAPE_INTERVAL_S = 5
STEP_S = 15
RATE_INTERVAL = "1m"  # what Grafana's $__rate_interval is for a 15 s scrape: 4 scrapes


def available() -> bool:
    return shutil.which("prometheus") is not None


@contextlib.contextmanager
def prometheus(metrics_url: str) -> Iterator[str]:
    """A Prometheus scraping ``metrics_url`` every few seconds, on a loopback port; its base URL."""
    target = metrics_url.removeprefix("http://").removesuffix("/metrics")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="candle-prometheus-") as folder:
        config = Path(folder) / "prometheus.yml"
        config.write_text(
            f"global: {{scrape_interval: {SCRAPE_INTERVAL_S}s, evaluation_interval: {SCRAPE_INTERVAL_S}s}}\n"
            f"scrape_configs:\n  - job_name: ray\n    static_configs: [{{targets: ['{target}']}}]\n"
        )
        command = [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={folder}/data",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        with (Path(folder) / "prometheus.log").open("w") as log:
            server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base}/-/ready", timeout=5).status_code == 200:
                        break
                time.sleep(0.5)
            yield base
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


def wait_for_samples(base: str, selector: str, count: int, timeout_s: float = 120) -> None:
    """Until Prometheus holds ``count`` samples of ``selector`` from the last minute (or the time is up:
    the panel reading it then shows no data, and the run says so)."""
    query = {"query": f"count_over_time({selector}[1m])"}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = httpx.get(f"{base}/api/v1/query", params=query, timeout=30).json()["data"]["result"]
        if sum(float(item["value"][1]) for item in result) >= count:
            return
        time.sleep(SCRAPE_INTERVAL_S)


@dataclass(frozen=True)
class Answer:
    panel: Panel
    series: list[tuple[str, list[tuple[float, float]]]]  # legend -> (time, value) points


def evaluate(base: str, start: float, end: float) -> list[Answer]:
    """Every panel's queries over [start, end], as Grafana would ask them with every model selected; the
    steps end at ``end`` (Prometheus evaluates at start + k * step), so the last scrape is in."""
    start = end - math.ceil((end - start) / STEP_S) * STEP_S
    answers = []
    for panel in panels():
        series = []
        for expr, legend in zip(panel.exprs, panel.legends, strict=True):
            query = {"query": concrete(expr, ".*", RATE_INTERVAL), "start": start, "end": end, "step": STEP_S}
            result = httpx.get(f"{base}/api/v1/query_range", params=query, timeout=60).json()["data"]["result"]
            for item in result:
                points = [(float(t), float(v)) for t, v in item["values"] if not math.isnan(float(v))]
                if points:
                    series.append((_legend(legend, item["metric"]), points))
        answers.append(Answer(panel, series))
    return answers


def _legend(template: str, labels: dict[str, str]) -> str:
    for key, value in labels.items():
        template = template.replace("{{" + key + "}}", value)
    return template


def report(answers: list[Answer]) -> list[str]:
    """Markdown lines: each panel and how many series its queries returned on the demo."""
    lines = ["| row | panel | series with data |", "|---|---|---|"]
    lines += [f"| {a.panel.row} | {a.panel.title} | {len(a.series)} |" for a in answers]
    return lines


def empty(answers: list[Answer]) -> list[str]:
    """Panels without data on the demo, but vLLM's (the CPU demo runs no vLLM engine)."""
    return [a.panel.title for a in answers if not a.series and a.panel.row != "vLLM engines"]


def draw(answers: list[Answer], picture: Path, start: float) -> None:
    """The board's panels (vLLM's row left out) as a grid of charts, each in its panel's unit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [a for a in answers if a.panel.row != "vLLM engines"]
    columns = 3
    rows = math.ceil(len(shown) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(18, 3.2 * rows), squeeze=False)
    figure.patch.set_facecolor("#111217")
    for ax, answer in zip(axes.flat, shown, strict=False):
        ax.set_facecolor("#181b1f")
        ax.tick_params(colors="#ccccdc", labelsize=7)
        for spine in ax.spines.values():
            spine.set_color("#333")
        row = answer.panel.row.replace("$model", "all models")
        ax.set_title(f"{answer.panel.title}  [{row}]", color="#ccccdc", fontsize=9, loc="left")
        ax.set_ylabel(answer.panel.unit, color="#8e8e8e", fontsize=7)
        for legend, points in answer.series[:8]:
            minutes, values = [(t - start) / 60 for t, _ in points], [v for _, v in points]
            ax.plot(minutes, values, linewidth=1.2, marker="o", markersize=2, label=legend)  # a lone point shows
        if answer.series:
            ax.legend(fontsize=6, loc="upper left", facecolor="#181b1f", labelcolor="#ccccdc", framealpha=0.8)
        else:
            ax.text(0.5, 0.5, "no data", color="#8e8e8e", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("minutes into the load test", color="#8e8e8e", fontsize=7)
    for ax in list(axes.flat)[len(shown) :]:
        ax.set_visible(False)
    figure.suptitle("candle: models and downloads (the demo under `make load-test`)", color="#ccccdc")
    figure.tight_layout()
    picture.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(picture, dpi=80, facecolor=figure.get_facecolor())
