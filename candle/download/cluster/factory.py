"""Who brings up a node's downloader: one small actor in the cluster's base environment.

A model may bring its own libraries in a Ray ``runtime_env`` (NV-Embed-v2: ``pip:
[transformers==4.42.4]``, which resolves huggingface_hub 0.36). Ray gives every actor a process
creates that process's runtime_env: a child may override fields and add variables, but it cannot
drop its creator's ``pip``, ``uv`` or ``conda`` (on Ray 2.60 an actor under ``pip`` starts children
under the same ``pip`` whatever they ask for, ``{"pip": []}`` included). A node's downloader is
shared by every model on the node and outlives its creator, so if a replica under a model's pins
created it, every later model on that node would be downloaded by those pins, and the downloader's
own huggingface_hub internals would not even import.

So one detached actor, on the head node (which lives as long as the cluster), creates downloaders,
in its own environment. Only processes outside any model's runtime_env create it (the gateway at
start, plain replicas, the CLI, jobs; ``get_if_exists``: the first one wins); a replica marked with
``MODEL_RUNTIME_ENV_VAR`` waits for one of them instead.

Ray rebuilds an actor handle from the actor's class in every process that holds one; where the
class does not import (the downloader under an old huggingface_hub) the handle rejects every
call. So the actor class is ``DownloaderActor``, a shell with the downloader's remote methods that
imports the implementation (and huggingface_hub's internals) only inside the actor.
"""

from __future__ import annotations

import os
import time

import ray
from ray.actor import ActorHandle
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..config import MODEL_RUNTIME_ENV_VAR, FetchRequest
from ..records import RepoProgressRecord

NAMESPACE = "candle"
FACTORY_NAME = "candle-downloader-factory"
HEAD_NODE = "node:__internal_head__"  # a resource only the head node has (Ray's own state actors use it)
FACTORY_WAIT_S = 120.0  # how long a replica under its own runtime_env waits for a base process to start one


class NoDownloaderFactory(RuntimeError):
    """A replica under its model's runtime_env found no downloader factory, and may not create one."""

    def __init__(self, model: str) -> None:
        super().__init__(
            f"{model}: no node downloader factory after {FACTORY_WAIT_S:.0f}s; a replica under its model's own "
            "runtime_env cannot start one (it would inherit the model's libraries): deploy the gateway app, "
            "or any process outside a model's runtime_env that fetches, first"
        )


def downloader_name(node_id: str) -> str:
    return f"candle-downloader-{node_id}"


class DownloaderActor:
    """A node's downloader as Ray runs it: ``NodeDownloader``'s remote methods, importable anywhere."""

    def __init__(self) -> None:
        from ..downloader import NodeDownloader  # the implementation loads in the actor only

        self._downloader = NodeDownloader()

    async def ping(self) -> float:
        return await self._downloader.ping()

    async def fetch(self, request: FetchRequest) -> str:
        return await self._downloader.fetch(request)

    async def progress(self, repo_id: str | None = None, revision: str | None = None) -> list[RepoProgressRecord]:
        return await self._downloader.progress(repo_id, revision)

    def __repr__(self) -> str:  # shown by Ray in logs and the dashboard
        return repr(self._downloader)


class DownloaderFactory:
    """Creates node downloaders, which inherit this actor's (base) runtime_env."""

    def downloader(self, node_id: str) -> ActorHandle:
        return (
            ray.remote(DownloaderActor)  # type: ignore[return-value]  # Ray hints .options().remote() as the class or its handle
            .options(
                name=downloader_name(node_id),
                namespace=NAMESPACE,
                lifetime="detached",
                get_if_exists=True,
                num_cpus=0,
                max_concurrency=1000,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            )
            .remote()
        )


def downloader_factory() -> ActorHandle:
    """The cluster's downloader factory: created here unless this process runs under a model's runtime_env
    (then waited for). Blocking GCS calls: call it from a thread in async code."""
    model = os.environ.get(MODEL_RUNTIME_ENV_VAR)
    if not model:
        return (
            ray.remote(DownloaderFactory)  # type: ignore[return-value]  # Ray hints .options().remote() as the class or its handle
            .options(
                name=FACTORY_NAME,
                namespace=NAMESPACE,
                lifetime="detached",
                get_if_exists=True,
                num_cpus=0,
                resources={HEAD_NODE: 0.001},
                scheduling_strategy="DEFAULT",  # never in the placement group of the replica that asks
            )
            .remote()
        )
    deadline = time.monotonic() + FACTORY_WAIT_S
    while True:
        try:
            return ray.get_actor(FACTORY_NAME, namespace=NAMESPACE)
        except ValueError:
            if time.monotonic() > deadline:
                raise NoDownloaderFactory(model) from None
            time.sleep(0.5)
