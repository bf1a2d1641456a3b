"""The ``candle`` command line: operators' entry points (prefetch now; status and demo build on it).

Every subcommand prints its result on stdout and, on failure, one line on stderr with exit code 1,
so it composes in scripts; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from tqdm import tqdm

from candle.contracts import RepoProgressRecord
from candle.download.client import make_request
from candle.download.config import caller_hub_access
from candle.download.remote_code import fetch_model
from candle.download.status import cluster_progress
from candle.raycluster import connect, error_line

PROGRESS_INTERVAL_S = 0.25


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
        folder = await fetch_model(request, args.trust_remote_code, show, PROGRESS_INTERVAL_S)
        bar.n = bar.total or bar.n
    return str(folder)


def _cmd_prefetch(args: argparse.Namespace) -> int:
    connect()
    print(asyncio.run(_prefetch(args)))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    connect()
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


def _size(n: float) -> str:
    return tqdm.format_sizeof(n, "B", 1000)


def _cmd_demo(args: argparse.Namespace) -> int:
    from candle import demo

    return demo.run(port=args.port, all_models=args.all_models)


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
        description="Ask each node's download actor for its progress (state, bytes, rate, ETA) and print a table.",
    )
    status.add_argument("repo", nargs="?", help="only this repo id")
    status.set_defaults(run=_cmd_status)

    demo = commands.add_parser(
        "demo",
        help="run the offline local demo: tiny models behind the OpenAI-compatible API, on CPU",
        description="Build the tiny model store, serve it on a loopback hub, and `serve run` the demo config.",
    )
    demo.add_argument("--port", type=int, default=8000, help="HTTP port of the API (default 8000)")
    demo.add_argument(
        "--all-models",
        action="store_true",
        help="serve a look-alike of each of the twelve production models, with production's names and fields",
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
