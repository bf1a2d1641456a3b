"""What the multinode tests run inside other Ray processes, in a module of its own: Ray imports a
remote function's module in the process that runs it, and these processes must stay as they are
(a node's downloader, which should not load the test modules' imports) or run another
huggingface_hub than the tests (whose test hub uses its internals).
"""

from __future__ import annotations

import asyncio
import os
from importlib.metadata import version

import huggingface_hub
import ray

from candle.download import fetch

OLD_HUB = "huggingface_hub==0.36.0"  # what pip resolves under transformers==4.42.4 (NV-Embed-v2's pin)


def env_view(actor: object) -> dict[str, str | None]:
    """Runs inside an actor (through ``__ray_call__``): its node, and its own view of the pins."""
    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "pin": os.environ.get("CANDLE_TEST_PIN"),
        "bidict": version("bidict"),
        "huggingface_hub": version("huggingface_hub"),
    }


def fetch_under_old_hub(repo_id: str) -> tuple[str, str]:
    """As a replica under NV-Embed-v2's pins: this worker's huggingface_hub version, and the snapshot
    folder the node's downloader fetched."""
    import deployments.base  # noqa: F401  (the replica's own module must import under the old hub)

    return huggingface_hub.__version__, str(asyncio.run(fetch(repo_id)))
