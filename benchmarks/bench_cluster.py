"""Time until every node of a cluster holds a model, relayed copies against store-and-forward.

On a simulated cluster of up to ``--nodes`` nodes (own cache folder each), each node's total
download and total upload capped at ``--rate-mb`` MB/s (``CANDLE_DOWNLOAD_BANDWIDTH``,
``CANDLE_DOWNLOAD_PEER_BANDWIDTH``): its links are alike, as on a real cluster where the hub is
remote. The test hub on loopback caps each connection at ``--hub-connection-mb`` MB/s, as CDNs cap
each stream: a node fills its link from the hub only with several connections (ranges) at once.
Each node serves peers at, and connects to them from, a loopback address of its own
(``127.0.1.<i>``): a peer server caps connections per client address (16), which would otherwise
count all simulated nodes as one.

For each mode, a cluster of its own:

- relay (candle's default): a node copies a blob from a peer while that peer still receives it;
- store-and-forward (``CANDLE_DOWNLOAD_RELAY=0``): a node copies verified blobs only, spread over
  the nodes that hold one.

it measures one node fetching the model alone, then N = 2, 4, 8, 16 nodes fetching a fresh copy of it
at once (one replica each): wall time until all N hold it / time for one node alone (goal <= 1.25),
and hub bytes / model bytes (goal 1.00). Relayed, with 4 nodes or more, it then kills the downloader
of a node that relays the blob to another, mid-blob, and reports the extra time over N = 4.

    python benchmarks/bench_cluster.py [--nodes 16] [--size-mb 96] [--rate-mb 16] [--hub-connection-mb 4]
        [--range-mb 16] [--smoke] [--results FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import tempfile
import time
from pathlib import Path

import ray
from benchlib import Report, parse_args
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from candle.demo.hub import LocalHub, write_random_file
from candle.download import fetch
from candle.download.cluster.factory import NAMESPACE, downloader_name
from candle.testing.cluster import NodeSpec, simulated_cluster

MB = 1024 * 1024
# Writes of 256 KiB: 1/64 s at the simulated 16 MB/s, as the default 1 MiB is at 64 MB/s; each relay
# hop passes bytes on one write later, so the write size is the pipeline's latency per hop.
ENV = {"HF_HUB_DISABLE_XET": "1", "CANDLE_DOWNLOAD_CHUNK_SIZE": "262144"}
MODES = {"relay": {"CANDLE_DOWNLOAD_RELAY": "1"}, "store-and-forward": {"CANDLE_DOWNLOAD_RELAY": "0"}}
KILLED = -4  # the results' key of N = 4 with a relay killed mid-blob


@ray.remote(num_cpus=0)
def fetch_on_node(repo_id: str) -> float:
    started = time.perf_counter()
    asyncio.run(fetch(repo_id))
    return time.perf_counter() - started


def all_fetch(repo_id: str, node_ids: list[str]) -> float:
    """Wall seconds until every one of ``node_ids`` holds ``repo_id`` (all start at once)."""
    started = time.perf_counter()
    ray.get(
        [
            fetch_on_node.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(repo_id)
            for n in node_ids
        ]
    )
    return time.perf_counter() - started


def fetch_with_a_relay_killed(repo_id: str, node_ids: list[str]) -> tuple[float, float] | None:
    """Like ``all_fetch``, but once a node relays the blob to another and holds 10-60% of it, its
    downloader is killed (its successor resumes, its downstream nodes go on from another source).
    Returns the wall seconds until the other nodes hold it and until all do (the killed node's own
    fetch waits for a new downloader actor), or None when no relay was caught mid-blob."""
    started = time.perf_counter()
    refs = [
        fetch_on_node.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(repo_id)
        for n in node_ids
    ]
    killed = None
    while killed is None and len(ray.wait(refs, num_returns=len(refs), timeout=0.02)[0]) < len(refs):
        files = {}
        for node in node_ids:
            with contextlib.suppress(ValueError, ray.exceptions.RayActorError):
                records = ray.get(ray.get_actor(downloader_name(node), namespace=NAMESPACE).progress.remote(repo_id))
                found = [f for r in records for f in r.files if f.path == "model.safetensors"]
                if found:
                    files[node] = found[0]
        upstreams = {f.upstream for f in files.values()}
        for node, f in files.items():
            if node in upstreams and f.source == "relay" and 0.1 <= f.bytes_done / f.bytes_total <= 0.6:
                ray.kill(ray.get_actor(downloader_name(node), namespace=NAMESPACE))
                killed = node
                break
    durations = ray.get(refs)
    if killed is None:
        return None
    return max(d for n, d in zip(node_ids, durations, strict=True) if n != killed), time.perf_counter() - started


def run_mode(
    mode: str, hub: LocalHub, workdir: Path, sizes: list[int], nodes: int, rate: float, range_size: int
) -> dict[int, tuple[float, ...]]:
    """N -> (seconds until N nodes hold the model, hub bytes); N = 1 is the node alone. ``KILLED``: N = 4
    with a relay killed mid-blob (seconds until the others hold it, until all do, hub bytes)."""
    links = {
        "CANDLE_DOWNLOAD_BANDWIDTH": str(int(rate)),
        "CANDLE_DOWNLOAD_PEER_BANDWIDTH": str(int(rate)),
        "CANDLE_DOWNLOAD_RANGE_SIZE": str(range_size),
    }
    env = {**ENV, **MODES[mode], **links, "HF_ENDPOINT": hub.endpoint}
    specs = [NodeSpec(f"n{i}", num_cpus=1, env={"CANDLE_DOWNLOAD_PEER_HOST": f"127.0.1.{i + 1}"}) for i in range(nodes)]
    results = {}
    with simulated_cluster(specs, env, cache_root=workdir / f"caches-{mode}") as (_, ids):
        node_ids = list(ids.values())
        all_fetch("bench/warm-up", node_ids)  # downloader actors and worker processes started on every node
        for n in sizes:
            repo_id = f"bench/{mode}-{n}"
            seconds = all_fetch(repo_id, node_ids[:n])
            if n == 1:  # the baseline of every ratio: the better of two runs, so one hiccup cannot flatter them
                seconds = min(seconds, all_fetch(f"bench/{mode}-alone", node_ids[:1]))
            results[n] = (seconds, hub.stats.bytes_for(repo_id))
        if mode == "relay" and nodes >= 4:
            times = fetch_with_a_relay_killed("bench/relay-killed", node_ids[:4])
            if times is not None:
                results[KILLED] = (*times, hub.stats.bytes_for("bench/relay-killed"))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=16, help="the largest N (the simulated cluster's size)")
    parser.add_argument("--size-mb", type=int, default=96, help="the model: one weights file of this size")
    parser.add_argument("--rate-mb", type=float, default=16, help="each node's download and upload cap, MB/s")
    parser.add_argument("--hub-connection-mb", type=float, default=4, help="the hub's cap per connection, MB/s")
    parser.add_argument("--range-mb", type=float, default=16, help="a node fetches in ranges of this size")
    smoke = {"nodes": 2, "size_mb": 2, "rate_mb": 8, "hub_connection_mb": 2, "range_mb": 0.5}
    args = parse_args(parser, smoke=smoke)
    report = Report("bench_cluster: time until every node holds a model, relayed vs store-and-forward")

    sizes = sorted({1, *(n for n in (2, 4, 8, 16) if n <= args.nodes), args.nodes})
    workdir = Path(tempfile.mkdtemp(prefix="candle-bench-cluster-"))
    store = workdir / "store"
    model_bytes = args.size_mb * MB
    write_random_file(store / "bench/warm-up" / "config.json", 64)
    for mode in MODES:
        for n in [*sizes, "alone", "killed"]:
            write_random_file(store / f"bench/{mode}-{n}" / "model.safetensors", model_bytes, seed=1)
    rate = args.rate_mb * MB

    try:
        with LocalHub(store) as hub:
            hub.state.throttles["bench/*"] = args.hub_connection_mb * MB
            results = {
                mode: run_mode(mode, hub, workdir, sizes, args.nodes, rate, int(args.range_mb * MB)) for mode in MODES
            }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    rates = f"hub {args.hub_connection_mb:g} MB/s per connection; each node <= {args.rate_mb:g} MB/s down and up"
    report(f"model: 1 x {args.size_mb} MB; {rates}; N nodes fetch at once, one replica each")
    report(
        f"one alone: the better of two runs; writes of 256 KiB, ranges of {args.range_mb:g} MB, 8 connections per file"
    )
    report_table(report, results, model_bytes, args.nodes)
    report.save(args.results)


def report_table(
    report: Report, results: dict[str, dict[int, tuple[float, ...]]], model_bytes: int, nodes: int
) -> None:
    report(f"{'mode':<19}{'N':>3}{'all hold it (s)':>17}{'/ one alone':>13}{'hub egress':>12}")
    for mode, by_n in results.items():
        alone = by_n[1][0]
        for n, (seconds, *rest) in by_n.items():
            if n == KILLED:
                everyone, hub_bytes = rest
                report(
                    f"relay, N = 4, a relay killed mid-blob: the others hold it {seconds - by_n[4][0]:+.1f} s later"
                    f" than with none killed, all (its own successor too) {everyone - by_n[4][0]:+.1f} s;"
                    f" hub egress {hub_bytes / model_bytes:.2f}x"
                )
                continue
            (hub_bytes,) = rest
            report(f"{mode:<19}{n:>3}{seconds:>17.1f}{seconds / alone:>13.2f}{hub_bytes / model_bytes:>11.2f}x")
        if mode == "relay" and nodes >= 4 and KILLED not in by_n:
            report("relay, N = 4: no relay was caught mid-blob to kill (the model is too small to catch one)")
    report("goal (relay): all hold it / one alone <= 1.25 for every N, hub egress 1.00x; a relay killed: < 1 s extra")


if __name__ == "__main__":
    main()
