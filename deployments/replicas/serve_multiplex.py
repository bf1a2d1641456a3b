"""The one place candle reaches into Ray Serve's model multiplexing internals.

``@serve.multiplexed`` keeps a replica's models in an LRU cache that it shrinks only by count, and
Ray Serve 2.60 has no public way to unload one chosen model; a pool replica unloads idle models and
makes room by memory (``pool.py``). So the cache Serve sets on the replica at its first load (a
``_ModelMultiplexWrapper`` under ``__serve_multiplex_wrapper``) is read and shrunk here and nowhere
else. ``multiplexed_cache`` fails loudly, naming Serve's version, when that shape changes;
tests/test_hf_internals.py checks the names it needs in Serve's source, and tests/test_pools.py's
unload and eviction tests use it on real Serve.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ray

WRAPPER = "__serve_multiplex_wrapper"
_NEEDED = ("models", "_model_cache_lock", "_push_multiplexed_replica_info", "unload_model_lru")


@dataclass(frozen=True)
class MultiplexedCache:
    """A replica's loaded models (least recently used first) and the lock Serve loads them under."""

    wrapper: Any

    @property
    def models(self) -> Mapping[str, Any]:
        return self.wrapper.models

    @property
    def lock(self) -> asyncio.Lock:
        return self.wrapper._model_cache_lock

    async def unload(self, model_id: str) -> None:
        """Drop ``model_id`` as Serve drops its least recently used model (its metrics with it), and
        have Serve tell the routers at its next push (every 0.1 s) that this replica no longer holds
        it. Only while holding ``lock``: a load in progress must not see its cache change."""
        self.wrapper.models.move_to_end(model_id, last=False)
        await self.wrapper.unload_model_lru()
        self.wrapper._push_multiplexed_replica_info = True


def multiplexed_cache(replica: object) -> MultiplexedCache | None:
    """The multiplexed model cache of ``replica`` (None before its first load, when Serve makes it)."""
    wrapper = getattr(replica, WRAPPER, None)
    if wrapper is None:
        return None
    missing = [name for name in _NEEDED if not hasattr(wrapper, name)]
    if missing or not isinstance(wrapper.models, OrderedDict):
        raise RuntimeError(
            f"Ray Serve {ray.__version__} changed its model multiplexing internals (missing: "
            f"{', '.join(missing) or 'an OrderedDict of models'}): update deployments/replicas/serve_multiplex.py"
        )
    return MultiplexedCache(wrapper)
