"""Embedding replicas (text, and CLIP images and texts), batched across concurrent requests.

``@serve.batch`` gathers the inputs of requests that arrive together into one forward pass per
(prompt, dimensions) group. The pass runs on the replica's event loop on purpose: in a worker
thread it fights the loop for the GIL (a small encoder's many short ops hold it between kernels),
so requests trickled in one at a time and batches stayed at 1-3 items (measured with MiniLM at 32
concurrent one-text requests: 43 texts/s in a thread, 97 inline). Blocked on the forward pass, the
loop instead finds every request that arrived meanwhile and batches them all next. Serve's own
control traffic (health checks, metrics) runs on a different loop and is not held up.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from ray import serve

from .base import ModelReplica

MAX_BATCH_ITEMS = 64
BATCH_WAIT_S = 0.005


@dataclass(frozen=True)
class EmbedCall:
    items: tuple[str | bytes, ...]
    prompt_name: str | None = None
    dimensions: int | None = None


class EmbeddingReplica(ModelReplica):
    async def embed(
        self, items: list[str | bytes], prompt_name: str | None = None, dimensions: int | None = None
    ) -> tuple[np.ndarray, int]:
        """Vectors for ``items`` in order, and the number of input tokens they used."""
        result = await self._embed_batched(EmbedCall(tuple(items), prompt_name, dimensions))
        if isinstance(result, Exception):  # serve.batch hands results back as they are: raise per caller
            raise result
        return result

    @serve.batch(max_batch_size=MAX_BATCH_ITEMS, batch_wait_timeout_s=BATCH_WAIT_S)
    async def _embed_batched(self, calls: list[EmbedCall]) -> list[tuple[np.ndarray, int] | Exception]:
        groups: dict[tuple[str | None, int | None], list[int]] = defaultdict(list)
        for index, call in enumerate(calls):
            groups[(call.prompt_name, call.dimensions)].append(index)
        results: list[tuple[np.ndarray, int] | Exception] = [ValueError("not computed")] * len(calls)
        for (prompt_name, dimensions), members in groups.items():
            flat = [item for i in members for item in calls[i].items]
            try:
                vectors, tokens = self.engine.embed_items(flat, prompt_name, dimensions)
            except Exception as e:  # one bad group (e.g. too many dimensions) fails its own requests only
                for i in members:
                    results[i] = e
                continue
            start = 0
            for i in members:
                end = start + len(calls[i].items)
                results[i] = (vectors[start:end], sum(tokens[start:end]))
                start = end
        return results
