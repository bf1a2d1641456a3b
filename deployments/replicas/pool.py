"""A warm pool's replica: one process that serves every model of its pool, loading each on demand.

Built on Ray Serve's model multiplexing: the gateway sends each request with its model's name as the
multiplexed model id (``deployments/routing.py``), Serve routes it to a replica holding that model
(else to the one holding fewest), and ``_load`` (``@serve.multiplexed``) loads it there once, however
many requests wait for it. The replica imports its models' libraries when it starts and keeps them,
so a load is the model's own: its fetch through the node's downloader (from the verified cache: no
hub or peer bytes once fetched), outside Serve's load lock so one model's slow download never holds
up another's load, then its engine, loaded in a thread. Each loaded model is served by its
capability's own replica class (``ModelReplica.serving``), so a pooled model answers exactly as one
with a deployment of its own.

Candle decides what to unload (through ``serve_multiplex``, the one wrapper of Serve's cache): a model
without requests for the pool's ``idle_after_s`` (its memory handed back), and, to make room for a
load, the least recently used past ``max_models_per_replica`` or past the memory booking (models
with no request in flight first). A model whose load fails is remembered for ``LOAD_RETRY_S``: its
requests get the reason at once, and its neighbours never queue behind its retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import ray
from ray import serve

from candle.api.errors import APIError, model_not_found
from candle.catalog import ModelSpec, Pool
from candle.catalog.capabilities import REGISTRY, resolve
from candle.contracts import ChatCall, CompletionCall, EmbedCall, ImageCall, RerankCall, TextChunk
from candle.download.remote_code import FetchedModel
from candle.engines import engine_kind
from candle.engines.device import gpu_count
from candle.engines.memory import estimated_bytes, load_itemsize, release_memory

from ..pool_records import ReplicaStatus
from .base import ModelReplica, fetch_weights, hide_gpus_from_cpu_replicas, load_fetched
from .chat import ChatReplica
from .embedding import EmbeddingReplica
from .image_generation import ImageGenerationReplica
from .rerank import RerankReplica
from .serve_multiplex import MultiplexedCache, multiplexed_cache

logger = logging.getLogger("ray.serve")

LOAD_RETRY_S = 10.0  # a failed model's requests get its reason at once for this long, then one tries again
GIB = 1024**3
R = TypeVar("R", bound=ModelReplica)


@dataclass
class PooledModel:
    """A model this replica holds: its capability's replica methods over its engine, its estimated
    size, and its use (requests in flight, and when the last one ended)."""

    server: ModelReplica
    size: int
    in_flight: int = 0
    last_used: float = field(default_factory=time.monotonic)
    unloaded: bool = False

    async def release(self) -> None:
        """Once unloaded and its last request is done: drop the engine and hand its memory back. The
        engine goes from ``server`` itself, which something may still reference (a finished request's
        frames, a handle's last call) after the model leaves the pool's cache."""
        if self.unloaded and not self.in_flight and hasattr(self.server, "engine"):
            del self.server.engine
            await asyncio.to_thread(release_memory)


@dataclass(frozen=True)
class Held:
    name: str
    size: int
    busy: bool  # requests in flight


class NoRoom(Exception):
    """A model larger than the replica's whole memory booking."""


def evictions(held: Iterable[Held], size: int, max_models: int, budget: int | None) -> list[str]:
    """Which of ``held`` (least recently used first) to unload before loading a model of ``size``
    bytes, so the replica holds at most ``max_models`` and, with a ``budget``, at most that many
    bytes: idle models first, then busy ones (their requests finish; the memory goes after them)."""
    if budget is not None and size > budget:
        raise NoRoom(f"it needs about {size / GIB:.2f} GiB, more than a replica of its pool books ({budget / GIB:.2f})")
    held = list(held)
    chosen: list[str] = []
    for candidate in [h for h in held if not h.busy] + [h for h in held if h.busy]:
        kept = [h for h in held if h.name not in chosen]
        fits = budget is None or sum(h.size for h in kept) + size <= budget
        if len(kept) < max_models and fits:
            break
        chosen.append(candidate.name)
    return chosen


def import_engines(specs: Iterable[ModelSpec]) -> None:
    """Import the engine module (torch, transformers, diffusers...) of every model: once, at start."""
    for spec in specs:
        resolve(REGISTRY[spec.capability].engines[engine_kind(spec, gpu_count())])


class PoolReplica:
    async def __init__(self, pool: dict[str, Any], models: list[dict[str, Any]]) -> None:  # type: ignore[misc]  # an async constructor: Ray Serve awaits it
        self.pool = Pool.model_validate(pool)
        self.specs = {spec.name: spec for spec in map(ModelSpec.model_validate, models)}
        hide_gpus_from_cpu_replicas(self.pool)
        started = time.monotonic()
        await asyncio.to_thread(import_engines, self.specs.values())
        logger.info(
            "pool %s: libraries of %d models imported in %.1fs",
            self.pool.name,
            len(self.specs),
            time.monotonic() - started,
        )
        self.fetches: dict[str, asyncio.Task[FetchedModel]] = {}
        self.failures: dict[str, tuple[float, str]] = {}  # model -> (when, why its last load failed)
        replica_id = serve.get_replica_context().replica_id.unique_id
        self.status = ReplicaStatus(self.pool.name, replica_id, ray.get_runtime_context().get_node_id())
        self._tasks = [asyncio.create_task(self.status.publish()), asyncio.create_task(self._unload_idle())]

    async def __del__(self) -> None:
        """Serve calls this when it stops the replica: its record goes with it."""
        for task in self._tasks:
            task.cancel()
        await self.status.withdraw()

    # -- what the gateway calls: each model's own replica methods, on the model the request names -----

    async def embed_many(self, calls: list[EmbedCall]) -> list[tuple[np.ndarray, int] | Exception]:
        async with self._using(EmbeddingReplica) as server:
            return await server.embed_many(calls)

    async def rerank_many(self, calls: list[RerankCall]) -> list[tuple[np.ndarray, int] | Exception]:
        async with self._using(RerankReplica) as server:
            return await server.rerank_many(calls)

    async def chat(self, call: ChatCall) -> AsyncIterator[TextChunk]:
        async with self._using(ChatReplica) as server:
            async for chunk in server.chat(call):
                yield chunk

    async def complete(self, call: CompletionCall) -> AsyncIterator[TextChunk]:
        async with self._using(ChatReplica) as server:
            async for chunk in server.complete(call):
                yield chunk

    async def generate(self, call: ImageCall) -> list[bytes]:
        async with self._using(ImageGenerationReplica) as server:
            return await server.generate(call)

    # -- loading -------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _using(self, kind: type[R]) -> AsyncIterator[R]:
        """The request's model, loaded, as a ``kind`` replica, counted in flight while the call runs."""
        name = serve.get_multiplexed_model_id()
        model = await self._loaded(name)
        if not isinstance(model.server, kind):
            raise APIError(
                400, f"The model `{name}` cannot serve this call.", param="model", code="model_not_supported"
            )
        model.in_flight += 1
        try:
            yield model.server
        finally:
            model.in_flight -= 1
            model.last_used = time.monotonic()
            await model.release()  # if it was unloaded while this request ran

    async def _loaded(self, name: str) -> PooledModel:
        if name not in self.specs:
            raise model_not_found(name)
        self._raise_if_failed(name)
        cache = multiplexed_cache(self)
        if cache is None or name not in cache.models:
            self.status.set(name, "loading")
            await asyncio.wait({self._fetch(name)})  # its error, if any, is _load's to report
        return await self._load(name)

    def _fetch(self, name: str) -> asyncio.Task[FetchedModel]:
        """One fetch of ``name`` at a time, shared by every request waiting for its load."""
        if name not in self.fetches:
            self.fetches[name] = asyncio.create_task(fetch_weights(self.specs[name]))
        return self.fetches[name]

    @serve.multiplexed(max_num_models_per_replica=-1)  # candle unloads (_make_room, _unload_idle)
    async def _load(self, name: str) -> PooledModel:
        """Load ``name`` (Serve calls this under its lock, once per model however many requests wait)."""
        self._raise_if_failed(name)  # it failed while this request waited for the lock
        spec = self.specs[name]
        started = time.monotonic()
        try:
            fetched = await self._fetch(name)
            size = await asyncio.to_thread(estimated_bytes, fetched.folder, load_itemsize(spec))
            await self._make_room(size)
            engine = await asyncio.to_thread(load_fetched, spec, fetched)
        except Exception as e:
            reason = str(e) if isinstance(e, APIError | NoRoom) else f"{type(e).__name__}: {e}"
            self.failures[name] = (time.monotonic(), reason)
            self.status.set(name, "failed", reason)
            logger.error("pool %s: %s failed to load: %s", self.pool.name, name, reason)
            raise self._failed(name) from None
        finally:
            self.fetches.pop(name, None)
        self.failures.pop(name, None)
        self.status.set(name, "ready")
        logger.info(
            "pool %s: %s loaded in %.2fs (about %.0f MB)", self.pool.name, name, time.monotonic() - started, size / 1e6
        )
        return PooledModel(resolve(REGISTRY[spec.capability].replica).serving(spec, engine), size)

    def _raise_if_failed(self, name: str) -> None:
        when, _ = self.failures.get(name, (None, None))
        if when is not None and time.monotonic() - when < LOAD_RETRY_S:
            raise self._failed(name)

    def _failed(self, name: str) -> APIError:
        when, reason = self.failures[name]
        return APIError(
            503,
            f"The model `{name}` failed to load: {reason}",
            type="service_unavailable",
            code="model_failed",
            retry_after=max(LOAD_RETRY_S - (time.monotonic() - when), 1.0),
        )

    # -- unloading -----------------------------------------------------------------------------------

    async def _make_room(self, size: int) -> None:
        """Unload what must go for a model of ``size`` bytes (under Serve's load lock)."""
        cache = self._cache()
        models: Mapping[str, PooledModel] = cache.models
        held = [Held(name, model.size, model.in_flight > 0) for name, model in models.items()]
        memory_gb = self.pool.resources.memory_gb
        budget = int(memory_gb * GIB) if memory_gb else None
        for name in evictions(held, size, self.pool.max_models_per_replica, budget):
            await self._unload(cache, name, "to make room")

    async def _unload_idle(self) -> None:
        """Forever: unload each model that has had no request for the pool's ``idle_after_s``."""
        idle_after = self.pool.idle_after_s
        while True:
            await asyncio.sleep(min(idle_after / 4, 5.0))
            try:
                if (cache := multiplexed_cache(self)) is None:
                    continue
                async with cache.lock:
                    now = time.monotonic()
                    models: Mapping[str, PooledModel] = cache.models
                    for name, model in list(models.items()):
                        if not model.in_flight and now - model.last_used >= idle_after:
                            await self._unload(cache, name, f"idle for {idle_after:g}s")
            except Exception:  # never let the sweep die: log and sweep again
                logger.exception("pool %s: unloading idle models failed", self.pool.name)

    async def _unload(self, cache: MultiplexedCache, name: str, why: str) -> None:
        model: PooledModel = cache.models[name]
        await cache.unload(name)
        self.status.set(name, "idle")
        model.unloaded = True
        await model.release()  # now, or when its last request in flight ends
        logger.info("pool %s: %s unloaded (%s)", self.pool.name, name, why)

    def _cache(self) -> MultiplexedCache:
        cache = multiplexed_cache(self)
        if cache is None:
            raise RuntimeError("no multiplexed model cache inside a multiplexed load")
        return cache
