"""Rerank replicas: (query, document) pairs scored by a cross-encoder, batched across requests.

Shaped as the embedding replicas are, and for the same reasons: the gateway sends a model's
concurrent requests as one list (``rerank_many``, see ``deployments/coalescer.py``), as do
``/v1/score``'s pairwise calls and the batch job's rows; a list runs in a worker thread (two
overlap, as for embeddings) in one pass per (prompt, truncation) group, and a group that fails is
run again call by call, so one bad call fails alone.
"""

from __future__ import annotations

import asyncio

import numpy as np

from candle.contracts import RerankCall, RerankEngine

from .. import metrics
from .base import ModelReplica
from .batching import in_one_pass, run_grouped


class RerankReplica(ModelReplica):
    engine: RerankEngine

    async def rerank_many(self, calls: list[RerankCall]) -> list[tuple[np.ndarray, int] | Exception]:
        """Many calls in one request (concurrent requests, ``/v1/score``'s pairs, a batch job's rows):
        each call's scores (one per document, in order) and the tokens its pairs used, or its error."""
        return await asyncio.to_thread(self.rerank_calls, calls)

    def rerank_calls(self, calls: list[RerankCall]) -> list[tuple[np.ndarray, int] | Exception]:
        """One batch: a forward pass per (prompt, truncation) group; each call's result or error."""
        metrics.calls_started(self.spec, calls)
        return run_grouped(calls, lambda call: (call.prompt_name, call.max_tokens_per_doc), self._rerank_group)

    def _rerank_group(self, calls: list[RerankCall]) -> list[tuple[np.ndarray, int]]:
        first = calls[0]

        def run(pairs: list[tuple[str, str]]) -> tuple[np.ndarray, list[int]]:
            metrics.pass_started(self.spec, len(pairs))
            return self.engine.score_pairs(pairs, first.prompt_name, first.max_tokens_per_doc)

        return in_one_pass(calls, lambda call: [(call.query, document) for document in call.documents], run)
