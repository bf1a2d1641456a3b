"""What every model replica does first: fetch its weights through the node's downloader, then load.

``async def __init__`` awaits the download actor (the replica's event loop stays free, so Ray
Serve's health checks and logs keep flowing) and loads the engine in a worker thread. While this
runs, the gateway reports the model as downloading (with progress) or loading.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any, cast

import ray
from starlette.concurrency import iterate_in_threadpool

from candle.catalog import ModelSpec
from candle.contracts import ChatEngine, RepoProgressRecord, TextChunk, TextStream
from candle.download.client import make_request, node_downloader
from candle.download.config import FetchRequest
from candle.download.remote_code import fetch_model
from candle.engines import load_engine
from candle.placement import replica_resources

logger = logging.getLogger("ray.serve")

PROGRESS_LOG_INTERVAL_S = 10.0


def hide_gpus_from_cpu_replicas(spec: ModelSpec) -> None:
    """Keep a replica whose entry takes no GPU off its node's GPUs.

    Ray 2.60 no longer empties ``CUDA_VISIBLE_DEVICES`` for actors that ask for no GPU
    (ray-project/ray#54868): torch in such a replica sees every GPU of the node, and the engine
    would load there, outside Ray's GPU accounting and into memory that GPU replicas booked (seen on
    an H100: MiniLM with ``num_gpus: 0`` held GPU memory). Entries that take a GPU, on the replica
    or in its placement group, keep what Ray sets. Must run before anything initializes CUDA.
    """
    if replica_resources(spec)["GPU"] == 0:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


async def fetch_on_other_stage_nodes(spec: ModelSpec, request: FetchRequest) -> None:
    """Pipeline stages on other nodes (vLLM's workers there) load the snapshot from the same path as
    this replica: bring ``request`` (the commit fetched here) onto every node of its placement group."""
    if spec.resources.pipeline_parallel_size == 1 or (group := ray.util.get_current_placement_group()) is None:
        return
    here = ray.get_runtime_context().get_node_id()
    nodes = set(ray.util.placement_group_table(group)["bundles_to_node_id"].values()) - {here}
    downloaders = await asyncio.gather(*(asyncio.to_thread(node_downloader, node) for node in sorted(nodes)))
    await asyncio.gather(*(downloader.fetch.remote(request) for downloader in downloaders))


class ModelReplica:
    async def __init__(self, spec: dict[str, Any] | ModelSpec) -> None:
        self.spec = spec if isinstance(spec, ModelSpec) else ModelSpec.model_validate(spec)
        hide_gpus_from_cpu_replicas(self.spec)
        started = time.monotonic()
        request = make_request(
            self.spec.repo_id,
            revision=self.spec.revision,
            allow_patterns=self.spec.fetch_allow_patterns(),
            ignore_patterns=self.spec.ignore_patterns,
            token=os.environ.get("HF_TOKEN") or None,
        )
        # With remote code, also the repos its auto_map names, so transformers finds them cached.
        # on_progress says what the replica waits for, instead of looking hung.
        folder = await fetch_model(request, self.spec.trust_remote_code, self._log_progress, PROGRESS_LOG_INTERVAL_S)
        await fetch_on_other_stage_nodes(self.spec, replace(request, revision=folder.name))
        fetched = time.monotonic()
        self.engine = await asyncio.to_thread(load_engine, self.spec, folder)
        logger.info(
            "%s: weights ready in %.1fs, engine loaded in %.1fs",
            self.spec.name,
            fetched - started,
            time.monotonic() - fetched,
        )

    def _log_progress(self, repo: RepoProgressRecord) -> None:
        eta = f", ETA {repo.eta_s:.0f}s" if repo.eta_s else ""
        logger.info(
            "%s: %s %.2f/%.2f GB (%.1f MB/s%s)",
            self.spec.name,
            repo.state,
            repo.bytes_done / 1e9,
            repo.bytes_total / 1e9,
            repo.rate / 1e6,
            eta,
        )


async def iterate(engine: ChatEngine, chunks: TextStream) -> AsyncIterator[TextChunk]:
    """Async iteration over an engine's stream, as the engine declares it: async ones on the loop,
    blocking ones in a worker thread."""
    if engine.streams == "async":
        async for chunk in cast(AsyncIterator[TextChunk], chunks):
            yield chunk
    else:
        async for chunk in iterate_in_threadpool(cast(Iterator[TextChunk], chunks)):
            yield chunk
