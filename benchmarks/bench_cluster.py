"""Hub bytes per cluster, and peer copies against the hub, on a simulated 3-node cluster.

Two simulated clusters of 3 nodes (own cache folder each) in turn, the test hub on loopback:

1. candle as shipped (coordinator on): 3 nodes x 4 replicas fetch one multi-file model at once.
   Hub bytes served / model bytes: goal 1.00.
2. The same with coordination off (``CANDLE_DOWNLOAD_COORDINATE=0``): each node still deduplicates
   its own replicas (per-node locking, the usual way), so the hub serves the model once per node: 3.00.

Then, on cluster 1, one node fetches a second model alone from the hub, and another node copies it
from that peer: the throughput of each over loopback, and their ratio.

    python benchmarks/bench_cluster.py [--shards 8] [--shard-mb 32] [--smoke] [--results FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import ray
from benchlib import Report, parse_args
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from candle.demo.hub import LocalHub, write_random_file
from candle.download import fetch
from candle.testing.cluster import NodeSpec, simulated_cluster

MB = 1024 * 1024
NODES = [NodeSpec("head", num_cpus=2), NodeSpec("a", num_cpus=2), NodeSpec("b", num_cpus=2)]
ENV = {"HF_HUB_DISABLE_XET": "1", "CANDLE_DOWNLOAD_PEER_HOST": "127.0.0.1"}
REPLICAS_PER_NODE = 4


@ray.remote(num_cpus=0)
def replicas_fetch(repo_id: str, replicas: int) -> float:
    async def run() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(fetch(repo_id) for _ in range(replicas)))
        return time.perf_counter() - started

    return asyncio.run(run())


def on(node_id: str) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node_id, soft=False)


def hub_ratio(hub: LocalHub, repo_id: str, model_bytes: int, ids: dict[str, str]) -> tuple[float, float]:
    """(hub bytes / model bytes, wall seconds) for every node's replicas fetching at once."""
    started = time.perf_counter()
    ray.get(
        [replicas_fetch.options(scheduling_strategy=on(n)).remote(repo_id, REPLICAS_PER_NODE) for n in ids.values()]
    )
    return hub.stats.bytes_for(repo_id) / model_bytes, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--shard-mb", type=int, default=32)
    args = parse_args(parser, smoke={"shards": 2, "shard_mb": 1})
    report = Report("bench_cluster: hub bytes per cluster, peer vs hub throughput")

    workdir = Path(tempfile.mkdtemp(prefix="candle-bench-cluster-"))
    store = workdir / "store"
    shards = {f"model-{i:05d}.safetensors": args.shard_mb * MB for i in range(args.shards)}
    for repo_id in ("bench/cluster", "bench/uncoordinated", "bench/peer"):
        for seed, (name, size) in enumerate(shards.items()):
            write_random_file(store / repo_id / name, size, seed=seed)
    model_bytes = sum(shards.values())

    with LocalHub(store) as hub:
        env = {**ENV, "HF_ENDPOINT": hub.endpoint}
        with simulated_cluster(NODES, env, cache_root=workdir / "caches-1") as (_, ids):
            coordinated, coordinated_s = hub_ratio(hub, "bench/cluster", model_bytes, ids)
            from_hub = ray.get(replicas_fetch.options(scheduling_strategy=on(ids["a"])).remote("bench/peer", 1))
            from_peer = ray.get(replicas_fetch.options(scheduling_strategy=on(ids["b"])).remote("bench/peer", 1))
            assert hub.stats.bytes_for("bench/peer") == model_bytes, "the second node must have copied from a peer"
        uncoordinated_env = {**env, "CANDLE_DOWNLOAD_COORDINATE": "0"}
        with simulated_cluster(NODES, uncoordinated_env, cache_root=workdir / "caches-2") as (_, ids):
            uncoordinated, uncoordinated_s = hub_ratio(hub, "bench/uncoordinated", model_bytes, ids)

    report(f"model: {args.shards} x {args.shard_mb} MB; 3 nodes x {REPLICAS_PER_NODE} replicas, cache per node")
    report(f"hub bytes / model bytes, candle (coordinator):    {coordinated:.2f}   ({coordinated_s:.1f} s)   goal 1.00")
    report(f"hub bytes / model bytes, per-node locking only:   {uncoordinated:.2f}   ({uncoordinated_s:.1f} s)")
    hub_rate, peer_rate = model_bytes / from_hub / MB, model_bytes / from_peer / MB
    report(f"one node from the hub: {hub_rate:.0f} MB/s; the next from a peer: {peer_rate:.0f} MB/s (one fetch each)")
    report(f"peer / hub throughput: {peer_rate / hub_rate:.2f}")
    report.save(args.results)


if __name__ == "__main__":
    main()
