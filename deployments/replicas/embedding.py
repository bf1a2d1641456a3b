"""Embedding replicas (text, and CLIP images and texts): lists of calls, one forward pass per group.

The gateway sends a model's concurrent requests as one list (``embed_many``, see
``deployments/coalescer.py``), so batches form before a Serve round trip is paid; the batch job
sends its rows the same way. Each list runs in a worker thread, and the gateway keeps two lists per
replica in flight, so two forward passes overlap: a replica whose torch has one thread (Ray's
``OMP_NUM_THREADS`` for one CPU or less) still keeps two cores busy, where one pass at a time on
the event loop left the second idle (``make bench-peers``, 16 texts per request: 0.79x Infinity's
texts/s on the loop, 1.12x in threads; one text: 1.15x and 1.13x).
"""

from __future__ import annotations

import asyncio

import numpy as np

from candle.contracts import EmbedCall, EmbeddingEngine

from .. import metrics
from .base import ModelReplica
from .batching import in_one_pass, run_grouped


class EmbeddingReplica(ModelReplica):
    engine: EmbeddingEngine

    async def embed_many(self, calls: list[EmbedCall]) -> list[tuple[np.ndarray, int] | Exception]:
        """Many calls in one request (concurrent requests, a batch job's rows): each call's vectors and
        input tokens, or its error, in order.

        One request per call would cost a Serve round trip per call, which is slower than the forward
        pass of a small encoder; callers keep each list to a few dozen items, so a list from the
        batch job is not much longer than one from online requests.
        """
        return await asyncio.to_thread(self.embed_calls, calls)

    def embed_calls(self, calls: list[EmbedCall]) -> list[tuple[np.ndarray, int] | Exception]:
        """One batch: a forward pass per (prompt, dimensions) group; each call's result or error."""
        metrics.calls_started(self.spec, calls)
        return run_grouped(calls, lambda call: (call.prompt_name, call.dimensions), self._embed_group)

    def _embed_group(self, calls: list[EmbedCall]) -> list[tuple[np.ndarray, int]]:
        """Calls of one (prompt, dimensions) in one forward pass, split back per call."""
        first = calls[0]

        def run(flat: list) -> tuple[np.ndarray, list[int]]:
            metrics.pass_started(self.spec, len(flat))
            vectors, tokens = self.engine.embed_items(flat, first.prompt_name, first.dimensions)
            metrics.read_tokens(self.spec, sum(tokens))
            return vectors, tokens

        return in_one_pass(calls, lambda call: call.items, run)
