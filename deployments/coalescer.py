"""Concurrent requests to one model become one replica call (embeddings, rerank).

A Serve round trip costs both ends a few milliseconds of CPU (the handle's router, the replica's
request wrapper, serialisation), about as much as a small encoder's forward pass over one text, so
one call per request spends the CPU that should go to the model (measured with MiniLM at 32
clients sending one text each: the gateway and the replica spent 19 ms of CPU per request besides
the model). The gateway instead queues each model's calls and sends them as one list
(``embed_many``, ``rerank_many``), at most ``in_flight`` lists at a time: a request that finds the model idle goes
out at once, and requests that arrive while lists are in flight leave together with the next one.
Batches form from the load itself, with no timer.

The queue is bounded like Serve's own (``max_queued_requests``, from the model's latency budget):
past it a request gets 503 with ``Retry-After``, as it would from Serve.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
from ray.serve.handle import DeploymentHandle

from candle.api.errors import APIError
from candle.catalog import ModelSpec
from candle.contracts import EmbedCall, RerankCall
from candle.placement import max_queued_requests

C = TypeVar("C")
R = TypeVar("R")

# One list a replica works through: results (or errors) in the order of its calls.
Send = Callable[[list[C]], Awaitable[Sequence[R | Exception]]]
Scored = tuple[np.ndarray, int]  # one call's rows (vectors, scores) and the input tokens they used


@dataclass(frozen=True)
class Bounds:
    """How much one list carries, how many lists are out at once, and how many calls may wait."""

    max_items: int  # items (texts, images) per list; one call larger than this travels alone
    in_flight: int  # lists sent and not yet answered
    max_queued: int  # calls waiting for a list; past it, 503
    retry_after_s: float


class Coalescer(Generic[C, R]):
    def __init__(self, send: Send[C, R], bounds: Bounds, size: Callable[[C], int]) -> None:
        self.send = send
        self.bounds = bounds
        self.size = size
        self.queue: deque[tuple[C, asyncio.Future[R]]] = deque()
        self.in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks

    async def __call__(self, call: C) -> R:
        if len(self.queue) >= self.bounds.max_queued:
            raise APIError(
                503,
                "The model is overloaded; retry later.",
                type="service_unavailable",
                code="overloaded",
                retry_after=self.bounds.retry_after_s,
            )
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self.queue.append((call, future))
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        while self.queue and self.in_flight < self.bounds.in_flight:
            batch = self._take()
            if batch:
                self.in_flight += 1
                task = asyncio.create_task(self._send(batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[tuple[C, asyncio.Future[R]]]:
        """The next list: queued calls in order up to ``max_items`` (at least one), skipping calls
        whose caller has gone (cancelled: timed out, disconnected)."""
        batch: list[tuple[C, asyncio.Future[R]]] = []
        items = 0
        while self.queue:
            call, future = self.queue[0]
            if future.done():
                self.queue.popleft()
                continue
            size = self.size(call)
            if batch and items + size > self.bounds.max_items:
                break
            self.queue.popleft()
            batch.append((call, future))
            items += size
        return batch

    async def _send(self, batch: list[tuple[C, asyncio.Future[R]]]) -> None:
        try:
            results = await self.send([call for call, _ in batch])
        except Exception as e:  # the list failed as a whole (transport, the replica died): each caller hears
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
        except BaseException:  # the gateway is going away
            for _, future in batch:
                future.cancel()
            raise
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        finally:
            self.in_flight -= 1
            self._dispatch()


# Items per list (texts, images, or query-document pairs): a forward pass short enough that a list
# arriving behind it does not wait long.
LIST_ITEMS = 64
LISTS_PER_REPLICA = 2  # two passes overlap on a replica (each in a worker thread): two cores busy


def model_coalescer(send: Send[C, R], spec: ModelSpec, size: Callable[[C], int]) -> Coalescer[C, R]:
    """One model's calls, sent to its replicas through ``send`` as lists, bounded by the model's entry."""
    replicas = spec.autoscaling.max_replicas if spec.autoscaling else spec.num_replicas
    bounds = Bounds(
        max_items=LIST_ITEMS,
        # Never more than the replicas' own slots: what would wait there waits here, where it can join a list.
        in_flight=min(LISTS_PER_REPLICA, spec.max_ongoing_requests) * replicas,
        max_queued=max_queued_requests(spec),
        retry_after_s=spec.limits.queue_latency_budget_s,
    )
    return Coalescer(send, bounds, size)


def embedding_coalescer(handle: DeploymentHandle, spec: ModelSpec) -> Coalescer[EmbedCall, Scored]:
    """Embedding calls, to ``embed_many``: each call's vectors and the input tokens they used."""
    return model_coalescer(handle.embed_many.remote, spec, lambda call: len(call.items))


def rerank_coalescer(handle: DeploymentHandle, spec: ModelSpec) -> Coalescer[RerankCall, Scored]:
    """Rerank calls, to ``rerank_many``: each call's scores and the tokens its pairs used."""
    return model_coalescer(handle.rerank_many.remote, spec, lambda call: len(call.documents))
