"""Where a batch's rows are computed: the Ray Data actor, and the two replicas it can call.

``--via serve`` calls the model's running Serve deployment through its handle, as the gateway
does (so the job shares its replicas with online traffic); ``--via actors`` builds the
registry's replica class inside the actor, without Serve: the same fetch through the node's
downloader, the same engine, the same methods. Both are a ``Target``, so every capability runs
one way whichever it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol

import numpy as np

from candle.api.responses import AssistantMessage
from candle.catalog import ModelSpec
from candle.catalog.capabilities import REGISTRY, resolve
from candle.contracts import ChatCall, CompletionCall, EmbedCall, ImageCall, RerankCall, TextChunk
from candle.jobs.batch_rows import RerankRow, Result, Work, error_record, parse, success_record
from candle.placement import max_queued_requests

Via = Literal["serve", "actors"]
Embedded = tuple[np.ndarray, int] | BaseException  # vectors, or a score per document, and tokens


class Target(Protocol):
    async def embed(self, calls: list[EmbedCall]) -> list[Embedded]: ...

    async def rerank(self, calls: list[RerankCall]) -> list[Embedded]: ...

    def stream(self, call: ChatCall | CompletionCall) -> AsyncIterator[TextChunk]: ...

    async def generate(self, call: ImageCall) -> list[bytes]: ...


class ServeTarget:
    """The running deployment, called through its handle: embedding and rerank rows in lists, as
    the gateway sends concurrent requests; a request per row for text and images.

    At most as many rows are in flight per actor as Serve queues for one caller
    (``max_queued_requests``): past that Serve refuses, and the row would fail for no fault of its own.
    """

    def __init__(self, spec: ModelSpec) -> None:
        from deployments.coalescer import embedding_coalescer, rerank_coalescer
        from deployments.routing import model_handle

        self.handle = model_handle(spec)  # its own deployment's, or its warm pool's
        self.slots = asyncio.Semaphore(max_queued_requests(spec))
        # Rows travel as the gateway sends online requests: concurrent calls in lists, a few per replica.
        self.embedder = embedding_coalescer(self.handle, spec)
        self.ranker = rerank_coalescer(self.handle, spec)

    async def embed(self, calls: list[EmbedCall]) -> list[Embedded]:
        return await self._in_lists(self.embedder, calls)

    async def rerank(self, calls: list[RerankCall]) -> list[Embedded]:
        return await self._in_lists(self.ranker, calls)

    async def _in_lists(self, coalescer: Any, calls: list[Any]) -> list[Embedded]:
        """Each call's result or error, through ``coalescer``: no more calls wait in it than its bound
        (the slots), so none is refused for no fault of its own."""

        async def one(call: Any) -> Any:
            async with self.slots:
                return await coalescer(call)

        return list(await asyncio.gather(*(one(call) for call in calls), return_exceptions=True))

    async def stream(self, call: ChatCall | CompletionCall) -> AsyncIterator[TextChunk]:
        method = "chat" if isinstance(call, ChatCall) else "complete"
        async with self.slots:
            async for chunk in getattr(self.handle.options(stream=True), method).remote(call):
                yield chunk

    async def generate(self, call: ImageCall) -> list[bytes]:
        async with self.slots:
            return await self.handle.generate.remote(call)


class ReplicaTarget:
    """The entry's replica class built in this process: fetch and engine, without Serve."""

    def __init__(self, replica: Any) -> None:
        self.replica = replica

    @classmethod
    async def load(cls, spec: ModelSpec) -> ReplicaTarget:
        replica_class = resolve(REGISTRY[spec.capability].replica)
        replica = replica_class.__new__(replica_class)
        await replica.__init__(spec)  # an async constructor, awaited as Serve awaits it
        return cls(replica)

    async def embed(self, calls: list[EmbedCall]) -> list[Embedded]:
        # The whole batch in one forward pass per (prompt, dimensions).
        return self.replica.embed_calls(calls)

    async def rerank(self, calls: list[RerankCall]) -> list[Embedded]:
        return self.replica.rerank_calls(calls)

    def stream(self, call: ChatCall | CompletionCall) -> AsyncIterator[TextChunk]:
        return self.replica.chat(call) if isinstance(call, ChatCall) else self.replica.complete(call)

    async def generate(self, call: ImageCall) -> list[bytes]:
        return await self.replica.generate(call)


async def one(target: Target, work: ChatCall | CompletionCall | ImageCall) -> Result:
    """A whole answer (the stream's chunks gathered as the gateway gathers them), or the images."""
    if isinstance(work, ImageCall):
        return await target.generate(work)
    message = AssistantMessage()
    async for chunk in target.stream(work):
        message.add(chunk)
    return message


async def compute(target: Target, works: list[Work]) -> list[Result | BaseException]:
    """Each call's result or error, in order: embeddings together, rerank rows together, the rest
    concurrently."""
    results: list[Result | BaseException | None] = [None] * len(works)
    # Only a model's own kind of call reaches its replica: an actor's replica of another capability has no
    # embed_calls or rerank_calls to be called with nothing.
    if embeds := {i: w for i, w in enumerate(works) if isinstance(w, EmbedCall)}:
        for i, embedded in zip(embeds, await target.embed(list(embeds.values())), strict=True):
            results[i] = embedded
    if ranks := {i: w for i, w in enumerate(works) if isinstance(w, RerankRow)}:
        scored = await target.rerank([w.call for w in ranks.values()])
        for (i, row), ranked in zip(ranks.items(), scored, strict=True):
            results[i] = ranked if isinstance(ranked, BaseException) else row.ranked(ranked[0])
    others = {i: w for i, w in enumerate(works) if isinstance(w, ChatCall | CompletionCall | ImageCall)}
    runs = [one(target, w) for w in others.values()]
    for i, result in zip(others, await asyncio.gather(*runs, return_exceptions=True), strict=True):
        results[i] = result
    return [r for r in results if r is not None]


async def run_rows(spec: ModelSpec, target: Target, rows: list[bytes]) -> list[str]:
    """One record per row: its output, or its error."""
    parsed = [await parse(spec, row) for row in rows]
    good = [(row_id, w) for row_id, w in parsed if not isinstance(w, Exception)]
    bad = [error_record(row_id, w) for row_id, w in parsed if isinstance(w, Exception)]
    results = await compute(target, [w for _, w in good])
    done = [
        error_record(row_id, r) if isinstance(r, BaseException) else success_record(row_id, r)
        for (row_id, _), r in zip(good, results, strict=True)
    ]
    return bad + done


class BatchWorker:
    """A Ray Data actor: its own event loop, its target, and one batch of rows per call."""

    def __init__(self, spec: dict[str, Any], via: Via) -> None:
        self.spec = ModelSpec.model_validate(spec)
        self.loop = asyncio.new_event_loop()
        self.target: Target = (
            ServeTarget(self.spec) if via == "serve" else self.loop.run_until_complete(ReplicaTarget.load(self.spec))
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
        return {"record": self.loop.run_until_complete(run_rows(self.spec, self.target, list(batch["row"])))}
