"""What every benchmark shares: the ``--smoke`` and ``--results`` switches, percentiles, and the report.

CI runs each benchmark with ``--smoke`` (tiny sizes) so none rots; numbers are printed, never
asserted, because a shared 2-core runner makes timings noise. ``make bench-*`` runs the full sizes
and writes the output to ``benchmarks/results/<name>.md`` with what it ran on.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def parse_args(parser: argparse.ArgumentParser, smoke: Mapping[str, Any]) -> argparse.Namespace:
    """Parse the benchmark's own options plus ``--smoke`` (which overrides them with ``smoke``) and ``--results``."""
    sizes = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in smoke.items())
    parser.add_argument("--smoke", action="store_true", help=f"CI's tiny run ({sizes}): proves it runs, not speed")
    parser.add_argument("--results", type=Path, help="also write the output as markdown to this file")
    args = parser.parse_args()
    if args.smoke:
        vars(args).update(smoke)
    return args


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by rank, as the benchmarks report p50 and p99."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0


def settle(below: float = 1.0, timeout_s: float = 180.0) -> tuple[float, float]:
    """Wait until the 1-minute load average is under ``below`` (at most ``timeout_s``): a server's
    start or the side before it leaves the machine busy for a minute, and a cell timed then measures
    that too. Returns (seconds waited, load average now)."""
    started = time.monotonic()
    while os.getloadavg()[0] >= below and time.monotonic() - started < timeout_s:
        time.sleep(2)
    return time.monotonic() - started, os.getloadavg()[0]


class Report:
    """Lines printed as they come and kept, so a full run can also be saved as the committed results."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.lines: list[str] = []
        self.load = os.getloadavg()[0]  # the machine may be shared: say how busy it was when the run began
        self.commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def save(self, path: Path | None) -> None:
        if path is None:
            return
        when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        command = " ".join(["python", *sys.argv])
        load = f"load average {self.load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
        machine = f"{os.cpu_count()} CPUs ({platform.machine()}), {load}"
        body = "\n".join(self.lines)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"# {self.title}\n\n`{command}`, {when}, commit {self.commit.strip() or 'unknown'}, {machine}.\n\n"
            f"```\n{body}\n```\n"
        )
