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
from functools import partial
from typing import Any, Self, cast

import ray
from huggingface_hub import constants
from starlette.concurrency import iterate_in_threadpool

from candle.catalog import Deployable, ModelSpec
from candle.contracts import ChatEngine, Engine, TextChunk, TextStream
from candle.download.client import make_request, node_downloader
from candle.download.config import FetchRequest
from candle.download.records import RepoProgressRecord
from candle.download.remote_code import FetchedModel, fetch_model, use_fetched_code
from candle.engines import load_engine
from candle.placement import replica_resources

from .. import metrics

logger = logging.getLogger("ray.serve")

PROGRESS_LOG_INTERVAL_S = 10.0


def hide_gpus_from_cpu_replicas(spec: Deployable) -> None:
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


def load_fetched(spec: ModelSpec, fetched: FetchedModel) -> Engine:
    """Load ``spec``'s engine from what the download service fetched, and from nothing else (blocking).

    The process goes offline first: a replica reads the hub's files from its node's cache, where
    they were verified, never from the hub (transformers would resolve a code repo's branch again
    and run newer code); the code repos load at the commits fetched.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"  # read at import by libraries not imported yet (vLLM's workers too)
    constants.HF_HUB_OFFLINE = True  # what huggingface_hub and transformers read at each call
    use_fetched_code(fetched)
    return load_engine(spec, fetched.folder)


async def fetch_weights(spec: ModelSpec) -> FetchedModel:
    """``spec``'s snapshot (and its code repos) through the node's downloader, onto every node of the
    replica's placement group too; progress is logged, so a replica waiting for it does not look hung."""
    request = make_request(
        spec.repo_id,
        revision=spec.revision,
        allow_patterns=spec.fetch_allow_patterns(),
        ignore_patterns=spec.ignore_patterns,
        token=os.environ.get("HF_TOKEN") or None,
    )
    # With remote code, also the repos its auto_map names, so transformers finds them cached.
    fetched = await fetch_model(
        request, spec.trust_remote_code, partial(_log_progress, spec.name), PROGRESS_LOG_INTERVAL_S, spec.code_revisions
    )
    await fetch_on_other_stage_nodes(spec, replace(request, revision=fetched.folder.name))
    return fetched


def _log_progress(name: str, repo: RepoProgressRecord) -> None:
    eta = f", ETA {repo.eta_s:.0f}s" if repo.eta_s else ""
    logger.info(
        "%s: %s %.2f/%.2f GB (%.1f MB/s%s)",
        name,
        repo.state,
        repo.bytes_done / 1e9,
        repo.bytes_total / 1e9,
        repo.rate / 1e6,
        eta,
    )


class ModelReplica:
    spec: ModelSpec
    engine: Engine

    async def __init__(self, spec: dict[str, Any] | ModelSpec) -> None:  # type: ignore[misc]  # an async constructor: Ray Serve awaits it
        self.spec = spec if isinstance(spec, ModelSpec) else ModelSpec.model_validate(spec)
        hide_gpus_from_cpu_replicas(self.spec)
        started = time.monotonic()
        fetched = await fetch_weights(self.spec)
        ready = time.monotonic()
        self.engine = await asyncio.to_thread(load_fetched, self.spec, fetched)
        metrics.replica_started(self.spec, started, ready)
        logger.info(
            "%s: weights ready in %.1fs, engine loaded in %.1fs",
            self.spec.name,
            ready - started,
            time.monotonic() - ready,
        )

    @classmethod
    def serving(cls, spec: ModelSpec, engine: Engine) -> Self:
        """This class's request methods over an engine loaded elsewhere (by a pool replica), without
        the constructor's fetch and load: they use nothing but ``spec`` and ``engine``."""
        replica = cls.__new__(cls)
        replica.spec, replica.engine = spec, engine
        return replica


async def iterate(engine: ChatEngine, chunks: TextStream) -> AsyncIterator[TextChunk]:
    """Async iteration over an engine's stream, as the engine declares it: async ones on the loop,
    blocking ones in a worker thread."""
    if engine.streams == "async":
        async for chunk in cast(AsyncIterator[TextChunk], chunks):
            yield chunk
    else:
        async for chunk in iterate_in_threadpool(cast(Iterator[TextChunk], chunks)):
            yield chunk
