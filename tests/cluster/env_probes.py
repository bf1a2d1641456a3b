"""What the multinode tests run inside other Ray processes, in a module of its own: Ray imports a
remote function's module in the process that runs it, and these processes must stay as they are
(a node's downloader, which should not load the test modules' imports) or run other library
versions than the tests (NV-Embed-v2's replica: transformers 4.42.4 and an older huggingface_hub,
under which the test hub's and diffusers' imports fail).
"""

from __future__ import annotations

import os
from importlib.metadata import version

import ray


def env_view(actor: object) -> dict[str, str | None]:
    """Runs inside an actor (through ``__ray_call__``): its node, and its own view of the pins."""
    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "pin": os.environ.get("CANDLE_TEST_PIN"),
        "bidict": version("bidict"),
        "huggingface_hub": version("huggingface_hub"),
        "transformers": version("transformers"),
        "sentence_transformers": version("sentence-transformers"),
    }


def replica_view(replica: object) -> dict[str, str | None]:
    """:func:`env_view`, and where the replica's candle comes from."""
    import candle.download
    import deployments.replicas.base

    return env_view(replica) | {"candle": candle.download.__file__, "deployments": deployments.replicas.base.__file__}
