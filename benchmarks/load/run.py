"""The demo under load: 2,000 embedding requests at concurrency 100 with bursts of chat streams.

Starts ``candle demo`` on ``--port`` (or reuses the API already answering there), runs
``benchmarks/load/locustfile.py`` with ``locust --headless`` in its own process, then checks that no
request hung and that ``/health`` and every model are fine afterwards. Prints p50/p99 latency and the
errors, and writes them to ``benchmarks/results/load.md``. Exits non-zero when an embedding request
failed, a request hung, or the service is unhealthy afterwards: at concurrency 100 every embedding
request must succeed (the models' queues are sized for such bursts, see ``candle/placement.py``).

It also reads what the serving metrics say: Ray's Prometheus endpoint of the demo is scraped before and
after the run, and the p50/p99 of the gateway's ``candle_request_duration_seconds`` histogram over the
run's requests stand next to the client's; the run fails when the two are more than one bucket apart.
Where Prometheus is installed (Debian's ``prometheus``), it scrapes the demo during the run, every
query of the Grafana board is evaluated over it (a panel without data fails the run) and the answers
are drawn into ``docs/img/board.png`` (``benchmarks/load/board.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import board  # benchmarks/load/board.py, beside this script
import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from candle.catalog import load_catalog
from candle.testing import free_port, interrupt, wait_for_models
from candle.testing.histograms import quantile, within_one_bucket
from deployments.metrics import LATENCY_BUCKETS_S

HERE = Path(__file__).resolve().parent
CHAT_PACING_S = 5.0  # as in locustfile.py (not imported: importing locust patches this process with gevent)
RESULTS = HERE.parent / "results" / "load.md"
PICTURE = HERE.parents[1] / "docs" / "img" / "board.png"
BIN = Path(sys.executable).parent
READY_TIMEOUT_S = 900
HANG_MARGIN_S = 300  # locust gets this long past its requests' own timeouts before it counts as hung
DURATION = "ray_candle_request_duration_seconds_bucket"
# locust's request name -> the labels of its requests' series in the gateway's duration histogram
MEASURED = {
    "embedding": {"model": "all-minilm-l6-v2", "route": "/v1/embeddings"},
    "chat stream": {"model": "qwen3-coder-tiny", "route": "/v1/chat/completions"},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="the demo's port: reused when it answers")
    parser.add_argument("--embedding-requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=100, help="embedding clients sending back to back")
    parser.add_argument("--chat-streams", type=int, default=10, help="chat streams per burst")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--metrics-url", help="Prometheus endpoint of a demo already running (default: the one this run starts)"
    )
    parser.add_argument("--picture", type=Path, default=PICTURE, help="where the board's picture goes")
    args = parser.parse_args()

    base = f"http://127.0.0.1:{args.port}"
    demo_models = {m.name: "ready" for m in load_catalog("demo").models}
    with contextlib.ExitStack() as stack:
        started, metrics_url = stack.enter_context(_demo(base, args.port))
        metrics_url = args.metrics_url or metrics_url
        scraper = stack.enter_context(board.prometheus(metrics_url)) if metrics_url and board.available() else None
        wait_for_models(base, demo_models, READY_TIMEOUT_S)
        before = _histograms(metrics_url)
        load_before = os.getloadavg()[0]
        started_at, wall_start = time.monotonic(), time.time()
        results, hung = _run_locust(base, args)
        seconds = time.monotonic() - started_at
        measured = _measured(before, _histograms_once_settled(metrics_url, before, results))
        health = _health(base, demo_models)
        refused = _refused(base)
        answers = _board(scraper, wall_start, args.picture)
    summary = _summarise(results, measured)
    report = _report(args, summary, hung, health, started, seconds, load_before, answers, refused)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    embedding = summary.get("embedding", {"ok": 0, "errors": {}})
    passed = not hung and health["ok"] and embedding["ok"] == args.embedding_requests and not embedding["errors"]
    passed = passed and refused == 400
    agree = all(s["agree"] for s in summary.values() if "agree" in s)
    return 0 if passed and agree and not board.empty(answers) else 1


def _board(prometheus: str | None, start: float, picture: Path) -> list[board.Answer]:
    """The board's queries over the run (from a minute before it), once Prometheus scraped its end: the
    refused request last of all (a rate needs two samples of its series)."""
    if prometheus is None:
        return []
    board.wait_for_samples(prometheus, 'ray_candle_requests_total{code="400"}', 2)
    answers = board.evaluate(prometheus, start - 60, time.time())
    board.draw(answers, picture, start)
    return answers


@contextlib.contextmanager
def _demo(base: str, port: int):
    """Yield whether this run started the demo (stopped again on exit, as Ctrl-C would), and the
    Prometheus endpoint of the demo it started (None for one already running)."""
    if _answers(base):
        print(f"load test: reusing the API at {base}", flush=True)
        yield False, None
        return
    metrics_port = free_port()
    print(f"load test: starting `candle demo --port {port} --metrics-port {metrics_port}`", flush=True)
    log = tempfile.NamedTemporaryFile("w", prefix="candle-demo-", suffix=".log", delete=False)  # noqa: SIM115
    demo = subprocess.Popen(
        [str(BIN / "candle"), "demo", "--port", str(port), "--metrics-port", str(metrics_port)],
        env={"RAY_ADDRESS": "local", **os.environ},  # a cluster of its own unless the caller names one
        # A session, and so a scheduling group, apart from locust's: in one group the demo's many
        # processes starve locust's one, whose clock then measures its own wait (2026-12-07: 107 and
        # 91 requests/s, p99 1.63 and 1.81 s, against 132, 1.16 s here). bench_peers' lighter client
        # shares the servers' group instead (see its ``serving``).
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield True, f"http://127.0.0.1:{metrics_port}/metrics"
    finally:
        interrupt(demo)
        log.close()
        print(f"load test: demo stopped (its log: {log.name})", flush=True)


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _run_locust(base: str, args: argparse.Namespace) -> tuple[dict, bool]:
    """Every request's outcome by request name, and whether locust had to be killed (a hung request)."""
    users = [
        {"user_class_name": "EmbeddingUser", "fixed_count": args.concurrency},
        {"user_class_name": "ChatStreamUser", "fixed_count": args.chat_streams},
    ]
    total = args.concurrency + args.chat_streams
    with tempfile.TemporaryDirectory() as tmp:
        results_json = Path(tmp) / "results.json"
        command = [
            str(BIN / "locust"),
            *("-f", str(HERE / "locustfile.py"), "--headless", "--only-summary"),
            *("--host", base, "-u", str(total), "-r", str(total)),
            *("--config-users", json.dumps(users), "--stop-timeout", "130"),
            *("--embedding-requests", str(args.embedding_requests)),
            *("--results-json", str(results_json)),
        ]
        print("load test:", " ".join(command), flush=True)
        budget = args.embedding_requests + HANG_MARGIN_S  # generous: a request per second plus the margin
        try:
            subprocess.run(command, timeout=budget, check=False)
        except subprocess.TimeoutExpired:
            return {}, True
        return json.loads(results_json.read_text()), False


def _refused(base: str) -> int:
    """One malformed request (no input, after the run's histograms were read), which must be refused with a
    400: the board's error panel then has a series to show, counted by model and code as any refusal is."""
    return httpx.post(f"{base}/v1/embeddings", json={"model": "all-minilm-l6-v2"}, timeout=30).status_code


def _health(base: str, models: dict[str, str]) -> dict:
    health = httpx.get(f"{base}/health", timeout=10)
    cards = httpx.get(f"{base}/v1/models", timeout=10).json()["data"]
    states = {card["id"]: card["status"]["state"] for card in cards}
    probe = httpx.post(f"{base}/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "still ok?"}, timeout=30)
    ok = health.status_code == 200 and states == models and probe.status_code == 200
    return {"ok": ok, "health": health.status_code, "states": states, "probe": probe.status_code}


Histograms = dict[str, dict[float, float]]  # request name -> le -> cumulative count (over Ray's workers)


def _histograms(url: str | None) -> Histograms:
    """The gateway's duration buckets of each measured request kind, summed over gateway replicas."""
    if url is None:
        return {}
    found: Histograms = {name: {} for name in MEASURED}
    for family in text_string_to_metric_families(httpx.get(url, timeout=30).text):
        for sample in family.samples:
            for name, labels in MEASURED.items():
                if sample.name == DURATION and labels.items() <= sample.labels.items():
                    le = float(sample.labels["le"])
                    found[name][le] = found[name].get(le, 0.0) + sample.value
    return found


def _histograms_once_settled(url: str | None, before: Histograms, results: dict) -> Histograms:
    """The buckets once Ray's agent has exported every request the client counted (it exports every few
    seconds), or what it has after a minute."""
    deadline = time.monotonic() + 60
    while True:
        after = _histograms(url)
        counted = {n: len(r["ok_latencies_s"]) + sum(r["errors"].values()) for n, r in results.items()}
        settled = all(
            after.get(n, {}).get(float("inf"), 0) - before.get(n, {}).get(float("inf"), 0) >= counted.get(n, 0)
            for n in MEASURED
        )
        if settled or time.monotonic() > deadline:
            return after
        time.sleep(2)


def _measured(before: Histograms, after: Histograms) -> Histograms:
    """The buckets of the run's requests alone: after minus before."""
    return {
        name: {le: n - before.get(name, {}).get(le, 0.0) for le, n in buckets.items()}
        for name, buckets in after.items()
    }


def _summarise(results: dict, measured: Histograms) -> dict:
    summary = {}
    for name, outcome in results.items():
        latencies = np.array(outcome["ok_latencies_s"])
        summary[name] = {
            "ok": len(latencies),
            "errors": outcome["errors"],
            "p50": float(np.percentile(latencies, 50)) if len(latencies) else float("nan"),
            "p99": float(np.percentile(latencies, 99)) if len(latencies) else float("nan"),
            "max": float(latencies.max()) if len(latencies) else float("nan"),
        }
        if buckets := measured.get(name):
            row = summary[name]
            row["metrics_count"] = buckets.get(float("inf"), 0.0)
            row["metrics_p50"], row["metrics_p99"] = quantile(0.5, buckets), quantile(0.99, buckets)
            row["agree"] = all(
                within_one_bucket(row[f"metrics_{p}"], row[p], LATENCY_BUCKETS_S) for p in ("p50", "p99")
            )
    return summary


def _report(
    args: argparse.Namespace,
    summary: dict,
    hung: bool,
    health: dict,
    started: bool,
    seconds: float,
    load: float,
    answers: list[board.Answer],
    refused: int,
) -> str:
    rows = [
        f"| {name} | {s['ok'] + sum(s['errors'].values())} | {s['ok']} | {sum(s['errors'].values())} "
        f"| {s['p50']:.3f} | {s['p99']:.3f} | {s['max']:.3f} |"
        for name, s in summary.items()
    ]
    errors = [f"- {name}: {count} x {error}" for name, s in summary.items() for error, count in s["errors"].items()]
    compared = [
        f"| {name} | {s['metrics_count']:.0f} | {s['p50']:.3f} | {s['metrics_p50']:.3f} | {s['p99']:.3f} "
        f"| {s['metrics_p99']:.3f} | {'yes' if s['agree'] else 'NO'} |"
        for name, s in summary.items()
        if "agree" in s
    ]
    return "\n".join(
        [
            "# Load test of the demo",
            "",
            f"`make load-test` ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
            f"{os.cpu_count()} CPUs, demo {'started by the run' if started else 'already running'}): "
            f"{args.embedding_requests} embedding requests (one short text each, `all-minilm-l6-v2`) from "
            f"{args.concurrency} clients sending back to back, while {args.chat_streams} clients stream a "
            f"16-token chat completion (`qwen3-coder-tiny`) every {CHAT_PACING_S:g} s, all starting together. "
            f"The run took {seconds:.0f} s ({args.embedding_requests / seconds:.1f} embedding requests/s); "
            f"the machine's load average was {load:.1f} when it started (the demo's replicas, locust and "
            "anything else running there share its CPUs).",
            "",
            "| request | sent | ok | errors | p50 s | p99 s | max s |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Errors: " + ("none" if not errors else ""),
            *errors,
            "",
            "What the serving metrics say about the same requests: the p50 and p99 of the gateway's "
            "`ray_candle_request_duration_seconds` histogram (Ray's Prometheus endpoint of the demo, scraped "
            "before and after the run; Prometheus' `histogram_quantile` interpolation), next to the client's. "
            "They agree when at most one bucket apart (buckets: "
            f"{', '.join(f'{b:g}' for b in LATENCY_BUCKETS_S)} s). The client's time includes Serve's proxy "
            "and the network; the gateway's starts when the request reaches it.",
            "",
            "| request | in the histogram | client p50 s | metrics p50 s | client p99 s | metrics p99 s | agree |",
            "|---|---|---|---|---|---|---|",
            *(compared or ["| (no metrics endpoint: a demo already running, without --metrics-url) | | | | | | |"]),
            "",
            "The Grafana board (`cluster/grafana/dashboards/candle.json`) on the demo: each panel's queries "
            "evaluated by Prometheus over the run, every model selected (vLLM's row has no data on the CPU "
            "demo, which runs no vLLM engine). Its picture: `docs/img/board.png`.",
            "",
            *(board.report(answers) if answers else ["(Prometheus is not installed: the board was not evaluated)"]),
            "",
            f"A malformed embedding request after the run (for the board's error panel): {refused} (want 400).",
            "",
            f"Hung (locust killed): {'yes' if hung else 'no'}. Afterwards: /health {health['health']}, "
            f"models {health['states']}, one more embedding request {health['probe']}.",
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
