"""Warm the nodes a model will land on before deploying it, as a Ray job.

    ray job submit --working-dir . -- python -m candle.jobs.prefetch sd3.5-large-turbo Qwen/Qwen3-0.6B

A catalog model is fetched onto every alive node that can host one of its replicas (its labels
match the model's ``label_selector`` and it has the CPUs and GPUs a replica takes), with the
catalog's file patterns and revision; a repo id that is not in the catalog goes to every alive
node, and so does everything with ``--all-nodes``. Each node fetches through its own downloader,
from a task pinned to it that takes no CPU, so the files land in that node's HF cache, verified,
and shared with any replica fetching the same files at the same time.

Progress lines and one summary line per node go to stdout (the job's log). If any node fails, the
job exits 1 with one error line on stderr, after the other nodes have finished.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from candle.catalog import Catalog, load_catalog
from candle.download.client import make_request
from candle.download.config import FetchRequest, HubAccess, caller_hub_access
from candle.download.records import RepoProgressRecord
from candle.download.remote_code import fetch_model
from candle.placement import NodeInfo, hosting_nodes, replica_resources
from candle.raycluster import connect, error_line

PROGRESS_INTERVAL_S = 5.0
MB = 1e6


@dataclass(frozen=True)
class Target:
    """One thing to warm: the name the operator gave, what to fetch, and on which nodes; with remote
    code, also the repos its config's auto_map names (as the replicas will fetch them)."""

    name: str
    request: FetchRequest
    node_ids: tuple[str, ...]
    remote_code: bool = False
    code_revisions: tuple[tuple[str, str], ...] = ()  # the entry's: code repo -> commit


def plan(
    names: Sequence[str],
    catalog: Catalog,
    nodes: Sequence[NodeInfo],
    *,
    all_nodes: bool = False,
    hub: HubAccess | None = None,
) -> list[Target]:
    """Targets for ``names`` on the alive ``nodes``; a catalog model no node can host is an error.

    ``hub`` (the job's own ``HF_ENDPOINT`` and token, when set) goes with every request.
    """
    hub = hub or {"endpoint": None, "token": None}
    alive = [node for node in nodes if node.get("Alive")]
    every = tuple(node["NodeID"] for node in alive)
    targets = []
    for name in names:
        spec = catalog.get(name)
        if spec is None:
            targets.append(Target(name, make_request(name, **hub), every))
            continue
        hosts = every if all_nodes else tuple(hosting_nodes(spec, alive))
        if not hosts:
            labels = spec.resources.label_selector or "any labels"
            raise ValueError(f"{name}: no alive node can host a replica ({replica_resources(spec)} on {labels})")
        request = make_request(
            spec.repo_id,
            revision=spec.revision,
            allow_patterns=spec.fetch_allow_patterns(),
            ignore_patterns=spec.ignore_patterns,
            **hub,
        )
        targets.append(Target(name, request, hosts, spec.trust_remote_code, tuple(sorted(spec.code_revisions.items()))))
    return targets


@ray.remote(num_cpus=0)
def warm(
    request: FetchRequest,
    progress_interval_s: float,
    remote_code: bool = False,
    code_revisions: tuple[tuple[str, str], ...] = (),
) -> Iterator[RepoProgressRecord | str]:
    """Fetch ``request`` through this node's downloader (with ``remote_code``, then the repos its
    auto_map names, at ``code_revisions``' commits where named, as replicas do); yield its progress,
    then the snapshot folder.

    A generator task, so the driver prints progress while the fetch runs. Without a token of the
    job's own it sends the node's ``HF_TOKEN`` as replicas do, so a replica starting meanwhile joins
    the same transfers. The token travels inside the request, whose repr never shows it.
    """
    request = replace(request, token=request.token or os.environ.get("HF_TOKEN") or None)
    updates: list[RepoProgressRecord] = []
    loop = asyncio.new_event_loop()
    try:
        fetching = loop.create_task(
            fetch_model(request, remote_code, updates.append, progress_interval_s, dict(code_revisions))
        )
        while not fetching.done():
            loop.run_until_complete(asyncio.wait({fetching}, timeout=progress_interval_s))
            batch, updates[:] = updates[:], []
            for update in batch:  # noqa: UP028 - Ray drives generators with send(), which list iterators lack
                yield update
        yield str(fetching.result().folder)
    finally:
        loop.close()


def progress_line(name: str, node_id: str, update: RepoProgressRecord) -> str:
    line = f"{name} node={node_id} {update.state}"
    if not update.bytes_total:  # still listing the repo
        return line
    eta = f", ETA {update.eta_s:.0f}s" if update.eta_s else ""
    done, total, rate = update.bytes_done / MB, update.bytes_total / MB, update.rate / MB
    return f"{line} {done:.1f}/{total:.1f} MB ({rate:.1f} MB/s{eta})"


async def warm_node(target: Target, node_id: str, progress_interval_s: float) -> str:
    """Run :func:`warm` on ``node_id`` (hard affinity: a dead node fails, nothing lands elsewhere)."""
    strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
    # A generator task: Ray's hints know neither its arguments nor that it yields references.
    warming: Any = warm.options(scheduling_strategy=strategy).remote(  # type: ignore[call-arg]
        target.request, progress_interval_s, target.remote_code, target.code_revisions
    )
    async for ref in warming:
        update = await ref
        if isinstance(update, str):  # the snapshot folder: the fetch is done
            print(f"{target.name} node={node_id} done snapshot={update}", flush=True)
            return update
        print(progress_line(target.name, node_id, update), flush=True)
    raise RuntimeError("the node's fetch ended without a snapshot")


async def run(targets: Sequence[Target], progress_interval_s: float) -> list[str]:
    """Warm every target on each of its nodes at once; return one line per failed node."""
    pairs = [(target, node) for target in targets for node in target.node_ids]
    results = await asyncio.gather(
        *(warm_node(target, node, progress_interval_s) for target, node in pairs), return_exceptions=True
    )
    return [
        f"{target.name} on node {node}: {error_line(result)}"
        for (target, node), result in zip(pairs, results, strict=True)
        if isinstance(result, BaseException)
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m candle.jobs.prefetch",
        description="Fetch models into the HF cache of every node they can land on (run it as a Ray job).",
    )
    parser.add_argument("models", nargs="+", metavar="MODEL_OR_REPO", help="catalog model name or hub repo id")
    parser.add_argument("--all-nodes", action="store_true", help="warm every alive node, whatever the placement")
    parser.add_argument("--catalog", default="production", help="production, demo or a catalog YAML path")
    parser.add_argument("--progress-interval", type=float, default=PROGRESS_INTERVAL_S, metavar="SECONDS")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        catalog = load_catalog(args.catalog)
        connect()
        targets = plan(args.models, catalog, ray.nodes(), all_nodes=args.all_nodes, hub=caller_hub_access())
        for target in targets:
            print(f"{target.name}: warming {len(target.node_ids)} node(s): {', '.join(target.node_ids)}", flush=True)
        failures = asyncio.run(run(targets, args.progress_interval))
    except Exception as e:  # one line for the operator; details are in the Ray logs
        failures = [error_line(e)]
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        print(f"candle prefetch: error: {failures[0]}{more}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
