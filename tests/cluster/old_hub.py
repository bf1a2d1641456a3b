"""What a model replica under NV-Embed-v2's pins runs, as a Ray task: the old huggingface_hub that
``transformers==4.42.4`` resolves to, candle's replica module, a fetch through the node's downloader.

A module of its own, because Ray imports a remote function's module in the worker: the test
modules import hub internals (the test hub) that the old huggingface_hub does not have.
"""

from __future__ import annotations

import asyncio

import huggingface_hub

import deployments.base  # noqa: F401  (the replica's own module must import under the old hub)
from candle.download import fetch

OLD_HUB = "huggingface_hub==0.36.0"  # what pip resolves under transformers==4.42.4


def fetch_under_old_hub(repo_id: str) -> tuple[str, str]:
    """This worker's huggingface_hub version, and the snapshot folder the node's downloader fetched."""
    return huggingface_hub.__version__, str(asyncio.run(fetch(repo_id)))
