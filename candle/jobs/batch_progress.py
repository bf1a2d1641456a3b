"""What a running batch job prints: its progress every few seconds, and what it waits for.

A job whose tasks or actors ask for more than the cluster has free waits without a word from Ray
(on the demo, which books 1.85 of 2 CPUs, a read task asking a whole CPU waited for ever): when no
row finished since the last line, the job asks Ray's state API which of its own tasks and actors
wait for a node, and prints what they ask beside what the cluster has free.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from types import TracebackType

import ray

from candle.raycluster import error_line

STATE_API_TIMEOUT_S = 10


@dataclass
class Progress:
    """Rows computed and failed so far, out of ``total`` once the input is counted."""

    total: int | None = None
    done: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)

    def begin(self, total: int) -> None:
        self.total, self.started = total, time.monotonic()

    def add(self, rows: int, failed: int) -> None:
        self.done += rows
        self.failed += failed

    def line(self) -> str:
        if self.total is None:
            return "progress: reading the input"
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = f", ETA {(self.total - self.done) / rate:.0f}s" if rate > 0 else ""
        return f"progress: {self.done}/{self.total} rows ({self.failed} failed), {rate:.1f} rows/s{eta}"


@dataclass(frozen=True)
class Waiting:
    """``count`` of this job's tasks or actors of one name, each asking ``asks``, that no node has taken."""

    kind: str  # "task" or "actor"
    name: str
    count: int
    asks: tuple[tuple[str, float], ...]


def waiting_work(dashboard: str, job_id: str, for_s: float) -> list[Waiting]:
    """This job's tasks and actors that have waited ``for_s`` seconds or more for a node, from Ray's
    state API (served by the dashboard). Work submitted just now is not waiting yet, only starting."""
    from ray.util.state import list_tasks

    filters: list[tuple[str, str, str | bool | int | float]] = [
        ("job_id", "=", job_id),
        ("state", "=", "PENDING_NODE_ASSIGNMENT"),
    ]
    tasks = list_tasks(
        address=dashboard, filters=filters, detail=True, raise_on_missing_output=False, timeout=STATE_API_TIMEOUT_S
    )
    since_ms = (time.time() - for_s) * 1000
    kinds = Counter(
        (
            "actor" if task.type == "ACTOR_CREATION_TASK" else "task",
            (task.name or task.func_or_class_name).removesuffix(".__init__"),
            tuple(sorted((name, float(n)) for name, n in (task.required_resources or {}).items() if n)),
        )
        for task in tasks
        # An actor's own calls wait for their actor, which is listed: they ask for no node.
        if task.type != "ACTOR_TASK" and (task.creation_time_ms or 0) <= since_ms
    )
    return [Waiting(kind, name, count, asks) for (kind, name, asks), count in kinds.items()]


def waiting_line(waiting: list[Waiting], free: dict[str, float], total: dict[str, float]) -> str:
    """``waiting for 0.5 CPU; the cluster has 0.25 of 2 CPU free: 2 actors X asking 0.25 CPU each``."""
    asked: dict[str, float] = defaultdict(float)
    for work in waiting:
        for name, amount in work.asks:
            asked[name] += amount * work.count
    need = ", ".join(f"{amount:g} {name}" for name, amount in sorted(asked.items()))
    have = ", ".join(f"{free.get(name, 0):g} of {total.get(name, 0):g} {name}" for name in sorted(asked))
    works = "; ".join(
        f"{work.count} {work.kind}{'s' if work.count > 1 else ''} {work.name} asking "
        + (", ".join(f"{amount:g} {name}" for name, amount in work.asks) or "nothing")
        + (" each" if work.count > 1 else "")
        for work in waiting
    )
    return f"waiting for {need or 'a node'}; the cluster has {have or 'what they ask'} free: {works}"


class Reporter:
    """Prints the progress line every ``interval`` seconds from a thread while the job runs and, when no
    row finished since the last line, what this job's tasks and actors wait for."""

    def __init__(self, progress: Progress, interval: float) -> None:
        self.progress = progress
        self.interval = interval
        self.job_id = ray.get_runtime_context().get_job_id()
        # The joined cluster's own dashboard: with no address, the state API would look for "a running
        # Ray" on this machine, which may be another cluster. (ray.init returns the context, joined already.)
        self.dashboard = ray.init(ignore_reinit_error=True).dashboard_url
        self.state_api = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="batch-progress", daemon=True)

    def __enter__(self) -> Reporter:
        self._thread.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        seen = 0
        while not self._stop.wait(self.interval):
            print(self.progress.line(), flush=True)
            if self.progress.done == seen and (line := self.waiting()):
                print(line, flush=True)
            seen = self.progress.done

    def waiting(self) -> str | None:
        """What the job waits for, if any of its work waits for a node."""
        if not self.state_api:
            return None
        if not self.dashboard:  # a local Ray started without one: said once
            self.state_api = False
            return "cannot see what the job waits for: the cluster runs no dashboard (Ray's state API)"
        try:
            waiting = waiting_work(f"http://{self.dashboard}", self.job_id, self.interval)
        except Exception as e:  # said once
            self.state_api = False
            return f"cannot see what the job waits for: Ray's state API: {error_line(e)}"
        return waiting_line(waiting, ray.available_resources(), ray.cluster_resources()) if waiting else None
