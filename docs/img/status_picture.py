"""Draws ``docs/img/candle-status.png``: ``candle status --watch`` during a real download on three nodes.

A simulated three-node cluster (``candle.testing.cluster``) fetches a model from a loopback Hub
look-alike capped at a few MB/s, every node at once: one node downloads from the hub and the others
copy from it as it arrives (relays). Midway, the CLI's own view (``candle.cli.status_view``) of the
cluster's progress is recorded by rich as SVG and headless Chromium (Debian's ``chromium``) turns it
into a PNG. Run: ``.venv/bin/python docs/img/status_picture.py`` (about a minute).
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from rich.console import Console

from candle.cli import status_view
from candle.demo.hub import LocalHub, write_random_file, write_repo
from candle.download import fetch
from candle.download.cluster.status import cluster_progress
from candle.testing.cluster import NodeSpec, simulated_cluster

MB = 1024 * 1024
PICTURE = Path(__file__).resolve().parent / "candle-status.png"
BIG, SMALL = "Qwen/Qwen3-Coder-30B-A3B-Instruct", "sentence-transformers/all-MiniLM-L6-v2"
ENV = {"HF_HUB_DISABLE_XET": "1", "CANDLE_DOWNLOAD_PEER_HOST": "127.0.0.1"}


@ray.remote(num_cpus=0)
def fetch_here(repo_id: str) -> str:
    return asyncio.run(fetch(repo_id))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="candle-status-picture-") as folder:
        store = Path(folder) / "store"
        write_repo(store, SMALL, {"config.json": b"{}"})
        write_random_file(store / SMALL / "model.safetensors", 4 * MB)
        write_repo(store, BIG, {"config.json": b"{}"})
        for part in (1, 2):
            write_random_file(store / BIG / f"model-0000{part}-of-00002.safetensors", 24 * MB, seed=part)
        with LocalHub(store) as hub:
            hub.state.throttles[BIG] = 4 * MB
            nodes = [NodeSpec("head", num_cpus=1), NodeSpec("a", num_cpus=1), NodeSpec("b", num_cpus=1)]
            env = {**ENV, "HF_ENDPOINT": hub.endpoint}
            with simulated_cluster(nodes, env, cache_root=Path(folder) / "caches") as (_, ids):
                on = {name: NodeAffinitySchedulingStrategy(node, soft=False) for name, node in ids.items()}
                ray.get(fetch_here.options(scheduling_strategy=on["head"]).remote(SMALL))
                running = [fetch_here.options(scheduling_strategy=on[name]).remote(BIG) for name in ids]
                view = wait_midway()
                ray.get(running)
    console = Console(record=True, width=150, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(view)
    with tempfile.TemporaryDirectory() as folder:
        svg = Path(folder) / "status.svg"
        svg.write_text(console.export_svg(title="candle status --watch"))
        screenshot(svg, PICTURE)
    print(PICTURE, file=sys.stderr)


def wait_midway():
    """The view once every node has a good part of the big model and none has it all (or, if the nodes
    finish too unevenly for that, the frame closest to it while all three were still copying)."""
    best, best_low, deadline = None, 0.0, time.monotonic() + 180
    while time.monotonic() < deadline:
        progress = asyncio.run(cluster_progress())
        big = [r for records in progress.values() for r in records if r.repo_id == BIG]
        if len(big) == 3 and all(r.state == "done" for r in big):
            break
        if len(big) == 3 and all(r.sources and r.fraction < 1 for r in big):
            low = min(r.fraction for r in big)
            if low > best_low:
                best, best_low = status_view(progress), low
            if low > 0.3:
                break
        time.sleep(0.2)
    if best is None:
        raise TimeoutError("the three nodes never copied the big model at the same time")
    return best


def screenshot(svg: Path, png: Path) -> None:
    """Headless Chromium's picture of ``svg`` at the size its ``viewBox`` declares (rich writes no width)."""
    view_box = svg.read_text()[:400].split('viewBox="')[1].split('"')[0]
    width, height = (math.ceil(float(n)) for n in view_box.split()[2:])
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={width},{height}",
            f"--screenshot={png}",
            svg.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


if __name__ == "__main__":
    main()
