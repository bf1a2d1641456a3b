"""The ``candle`` command line: operators' entry points (prefetch now; status and demo build on it).

Every subcommand prints its result on stdout and, on failure, one line on stderr with exit code 1,
so it composes in scripts; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from tqdm import tqdm

from candle.download.client import make_request
from candle.download.cluster.status import cluster_progress
from candle.download.config import caller_hub_access
from candle.download.records import RepoProgressRecord
from candle.download.remote_code import fetch_model
from candle.raycluster import connect, error_line

PROGRESS_INTERVAL_S = 0.25
STATE_STYLES = {"done": "green", "downloading": "cyan", "resolving": "yellow", "failed": "red"}


async def _prefetch(args: argparse.Namespace) -> str:
    request = make_request(
        args.repo,
        revision=args.revision,
        allow_patterns=args.include or None,
        ignore_patterns=args.exclude or None,
        cache_dir=args.cache_dir,
        **caller_hub_access(),
    )
    # tqdm draws only on a terminal (disable=None), so scripts see just the result or one error line.
    bar = tqdm(
        desc=args.repo, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, disable=args.quiet or None
    )

    def show(progress: RepoProgressRecord) -> None:
        bar.total = progress.bytes_total or None
        bar.n = progress.bytes_done
        bar.refresh()

    with bar:
        fetched = await fetch_model(request, args.trust_remote_code, show, PROGRESS_INTERVAL_S)
        bar.n = bar.total or bar.n
    return str(fetched.folder)


def _cmd_prefetch(args: argparse.Namespace) -> int:
    connect()
    print(asyncio.run(_prefetch(args)))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    connect()
    if args.watch:
        return _watch(args.repo, args.interval)
    per_node = asyncio.run(cluster_progress(args.repo))
    rows = [(node, entry) for node, entries in sorted(per_node.items()) for entry in entries]
    if not rows:
        print("no downloads yet" + (f" of {args.repo}" if args.repo else ""))
        return 0
    print(f"{'node':<14}{'model':<48}{'state':<13}{'done':>10}{'total':>10}{'rate':>12}{'eta':>8}")
    for node, entry in rows:
        eta = f"{entry.eta_s:.0f}s" if entry.eta_s else "-"
        print(
            f"{node[:12]:<14}{entry.repo_id[:46]:<48}{entry.state:<13}{_size(entry.bytes_done):>10}"
            f"{_size(entry.bytes_total):>10}{_size(entry.rate) + '/s':>12}{eta:>8}"
        )
        for f in entry.files:
            if f.state == "downloading":
                origin = f"{f.source} {f.upstream[:12]}" if f.upstream else f.source or "-"
                print(f"{'':<14}{f.path[:46]:<48}from {origin:<20}{_size(f.rate) + '/s':>12}")
        if entry.error:
            print(f"{'':<14}error: {entry.error}")
    return 0


def _watch(repo: str | None, interval_s: float) -> int:
    """Redraw ``status_view`` until Ctrl-C, which is how a watch ends: exit code 0.

    Ctrl-C only sets a flag, seen between redraws: as a KeyboardInterrupt it could land inside a
    poll (in asyncio.run, whose exit then waits for the poll's Ray calls, or in Ray's own code, which
    may swallow it) and the watch would not end (seen once in CI, at load 9).
    """
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with Live(status_view({}, repo), console=Console(), auto_refresh=False, transient=False) as live:
        while not stop.is_set():
            live.update(status_view(asyncio.run(cluster_progress(repo)), repo), refresh=True)
            stop.wait(interval_s)
    return 0


def status_view(per_node: dict[str, list[RepoProgressRecord]], repo: str | None = None) -> Table:
    """A progress bar per model and node, with bytes, rate, ETA and where the node copies from now."""
    table = Table(title="candle downloads" + (f" of {repo}" if repo else ""), title_justify="left", expand=False)
    for column in ("model", "node", "state", "progress"):
        table.add_column(column, no_wrap=True)
    for column in ("done", "rate", "eta"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("from", no_wrap=True)
    rows = sorted((entry.repo_id, node, entry) for node, entries in per_node.items() for entry in entries)
    for model, node, entry in rows:
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            ProgressBar(total=max(entry.bytes_total, 1), completed=entry.bytes_done, width=24),
            Text(f"{entry.fraction:>4.0%}"),
        )
        origin = ", ".join(f"{s.source} {s.upstream[:8]}" if s.upstream else s.source for s in entry.sources)
        table.add_row(
            model,
            node[:8],
            Text(entry.state, style=STATE_STYLES.get(entry.state, "")),
            bar,
            f"{_size(entry.bytes_done)}/{_size(entry.bytes_total)}",
            f"{_size(entry.rate)}/s",
            f"{entry.eta_s:.0f}s" if entry.eta_s else "-",
            origin or "-",
        )
        if entry.error:
            table.add_row("", "", Text(f"error: {entry.error}", style="red"), "", "", "", "", "")
    if not rows:
        table.add_row("no downloads yet", "", "", "", "", "", "", "")
    return table


def _size(n: float) -> str:
    return tqdm.format_sizeof(n, "B", 1000)


def _cmd_demo(args: argparse.Namespace) -> int:
    from candle import demo

    return demo.run(
        port=args.port, all_models=args.all_models, catalog_file=args.catalog, metrics_port=args.metrics_port
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="candle", description="Serve Hugging Face models on Ray.")
    commands = parser.add_subparsers(dest="command", required=True)

    prefetch = commands.add_parser(
        "prefetch",
        help="download a repo into this node's Hugging Face cache through the node's downloader",
        description="Join the running Ray cluster (RAY_ADDRESS or a local one), fetch REPO into this node's "
        "HF cache with verification, and print the snapshot folder.",
    )
    prefetch.add_argument("repo", help="repo id, e.g. sentence-transformers/all-MiniLM-L6-v2")
    prefetch.add_argument("--revision", help="branch, tag or commit (default: main)")
    prefetch.add_argument("--include", action="append", metavar="PATTERN", help="only files matching (repeatable)")
    prefetch.add_argument("--exclude", action="append", metavar="PATTERN", help="skip files matching (repeatable)")
    prefetch.add_argument("--cache-dir", help="HF hub cache folder (default: the node's HF_HUB_CACHE)")
    prefetch.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="also fetch the code of every repo its config's auto_map names (repo--module.Class)",
    )
    prefetch.add_argument("--quiet", action="store_true", help="no progress bar")
    prefetch.set_defaults(run=_cmd_prefetch)

    status = commands.add_parser(
        "status",
        help="download progress of every model on every node",
        description="Ask each node's download actor for its progress (state, bytes, rate, ETA) and print a table, "
        "or with --watch draw a progress bar per model and node, with the source each node copies from, live.",
    )
    status.add_argument("repo", nargs="?", help="only this repo id")
    status.add_argument(
        "--watch", action="store_true", help="a live view: progress bars per model and node, redrawn until Ctrl-C"
    )
    status.add_argument("--interval", type=float, default=1.0, help="seconds between redraws of --watch")
    status.set_defaults(run=_cmd_status)

    demo = commands.add_parser(
        "demo",
        help="run the offline local demo: tiny models behind the OpenAI-compatible API, on CPU",
        description="Build the tiny model store, serve it on a loopback hub, and `serve run` the demo config.",
    )
    demo.add_argument("--port", type=int, default=8000, help="HTTP port of the API (default 8000)")
    demo.add_argument(
        "--metrics-port",
        type=int,
        help="port of Ray's Prometheus endpoint on the demo's own Ray (default: one Ray picks, printed)",
    )
    which = demo.add_mutually_exclusive_group()
    which.add_argument(
        "--all-models",
        action="store_true",
        help="serve a look-alike of each of the fourteen production models, with production's names and fields",
    )
    which.add_argument(
        "--catalog",
        type=Path,
        metavar="FILE",
        help="serve your own catalog YAML instead; its entries must name repos the demo hub holds",
    )
    demo.set_defaults(run=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("candle: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line for the operator; the full error is in the Ray logs
        print(f"candle {args.command}: error: {error_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
