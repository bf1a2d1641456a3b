"""The demo under load: 2,000 embedding requests at concurrency 100 with bursts of chat streams.

Starts ``candle demo`` on ``--port`` (or reuses the API already answering there), runs
``benchmarks/load/locustfile.py`` with ``locust --headless`` in its own process, then checks that no
request hung and that ``/health`` and every model are fine afterwards. Prints p50/p99 latency and the
errors, and writes them to ``benchmarks/results/load.md``. Exits non-zero when an embedding request
failed, a request hung, or the service is unhealthy afterwards: at concurrency 100 every embedding
request must succeed (the models' queues are sized for such bursts, see ``candle/placement.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

from candle.catalog import load_catalog
from candle.testing import wait_for_models

HERE = Path(__file__).resolve().parent
CHAT_PACING_S = 5.0  # as in locustfile.py (not imported: importing locust patches this process with gevent)
RESULTS = HERE.parent / "results" / "load.md"
BIN = Path(sys.executable).parent
READY_TIMEOUT_S = 900
HANG_MARGIN_S = 300  # locust gets this long past its requests' own timeouts before it counts as hung


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="the demo's port: reused when it answers")
    parser.add_argument("--embedding-requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=100, help="embedding clients sending back to back")
    parser.add_argument("--chat-streams", type=int, default=10, help="chat streams per burst")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    base = f"http://127.0.0.1:{args.port}"
    demo_models = {m.name: "ready" for m in load_catalog("demo").models}
    with _demo(base, args.port) as started:
        wait_for_models(base, demo_models, READY_TIMEOUT_S)
        load_before = os.getloadavg()[0]
        started_at = time.monotonic()
        results, hung = _run_locust(base, args)
        seconds = time.monotonic() - started_at
        health = _health(base, demo_models)
    summary = _summarise(results)
    report = _report(args, summary, hung, health, started, seconds, load_before)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    embedding = summary.get("embedding", {"ok": 0, "errors": {}})
    passed = not hung and health["ok"] and embedding["ok"] == args.embedding_requests and not embedding["errors"]
    return 0 if passed else 1


@contextlib.contextmanager
def _demo(base: str, port: int):
    """Yield whether this run started the demo (stopped again on exit, as Ctrl-C would)."""
    if _answers(base):
        print(f"load test: reusing the API at {base}", flush=True)
        yield False
        return
    print(f"load test: starting `candle demo --port {port}`", flush=True)
    log = tempfile.NamedTemporaryFile("w", prefix="candle-demo-", suffix=".log", delete=False)  # noqa: SIM115
    demo = subprocess.Popen(
        [str(BIN / "candle"), "demo", "--port", str(port)],
        env={"RAY_ADDRESS": "local", **os.environ},  # a cluster of its own unless the caller names one
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield True
    finally:
        os.killpg(demo.pid, signal.SIGINT)
        try:
            demo.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)
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


def _health(base: str, models: dict[str, str]) -> dict:
    health = httpx.get(f"{base}/health", timeout=10)
    cards = httpx.get(f"{base}/v1/models", timeout=10).json()["data"]
    states = {card["id"]: card["status"]["state"] for card in cards}
    probe = httpx.post(f"{base}/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "still ok?"}, timeout=30)
    ok = health.status_code == 200 and states == models and probe.status_code == 200
    return {"ok": ok, "health": health.status_code, "states": states, "probe": probe.status_code}


def _summarise(results: dict) -> dict:
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
    return summary


def _report(
    args: argparse.Namespace, summary: dict, hung: bool, health: dict, started: bool, seconds: float, load: float
) -> str:
    rows = [
        f"| {name} | {s['ok'] + sum(s['errors'].values())} | {s['ok']} | {sum(s['errors'].values())} "
        f"| {s['p50']:.3f} | {s['p99']:.3f} | {s['max']:.3f} |"
        for name, s in summary.items()
    ]
    errors = [f"- {name}: {count} x {error}" for name, s in summary.items() for error, count in s["errors"].items()]
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
            f"Hung (locust killed): {'yes' if hung else 'no'}. Afterwards: /health {health['health']}, "
            f"models {health['states']}, one more embedding request {health['probe']}.",
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
