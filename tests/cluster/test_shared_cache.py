"""Shared-cache mode (HF_HOME on a network filesystem): one node downloads, the others wait and link."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from candle.demo.hub import LocalHub
from candle.testing.cluster import simulated_cluster
from tests.cluster.test_downloads import ENV, NODES, assert_copy, fetch_on_node, make_repo, on

pytestmark = pytest.mark.cluster

MB = 1024 * 1024


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalHub, dict[str, str], Path]]:
    """A cluster whose nodes all use one HF cache folder: (hub, node ids, that folder)."""
    with LocalHub(tmp_path_factory.mktemp("shared-store")) as hub:
        folder = tmp_path_factory.mktemp("shared-hf")
        env = {
            **ENV,
            "HF_ENDPOINT": hub.endpoint,
            "HF_HOME": str(folder),
            "HF_HUB_CACHE": str(folder / "hub"),
            "CANDLE_DOWNLOAD_SHARED_CACHE": "1",
        }
        with simulated_cluster(NODES, env) as (_, ids):
            yield hub, ids, folder / "hub"


def fetch_everywhere(ids: dict[str, str], repo_id: str, nodes: list[str], concurrent: int = 1) -> list[list[str]]:
    return ray.get([fetch_on_node.options(scheduling_strategy=on(ids[n])).remote(repo_id, concurrent) for n in nodes])


def test_shared_cache_downloads_once_and_every_node_sees_it(shared):
    hub, ids, _ = shared
    source = make_repo(hub.state.root, "shared/model", {f"part-{i}.safetensors": 3 * MB for i in range(2)})
    results = fetch_everywhere(ids, "shared/model", list(ids), concurrent=3)
    assert hub.stats.bodies_for("shared/model") == dict.fromkeys(source, 1)
    assert len({p for paths in results for p in paths}) == 1
    assert_copy(results[0][0], source)


def test_a_blob_gone_from_the_shared_cache_is_downloaded_again_once(shared):
    hub, ids, cache = shared
    source = make_repo(hub.state.root, "shared/vanished", {"model.safetensors": 4 * MB})
    fetch_everywhere(ids, "shared/vanished", list(ids))  # recorded: head holds it, in the shared folder
    (blob,) = (cache / "models--shared--vanished" / "blobs").iterdir()
    blob.unlink()  # an operator cleaned up, or another tool evicted it

    hub.state.throttles["shared/vanished"] = 1 * MB  # a and b both ask while it is downloaded again
    try:
        results = fetch_everywhere(ids, "shared/vanished", ["a", "b"])
    finally:
        hub.state.throttles.clear()

    assert hub.stats.bodies_for("shared/vanished") == {"model.safetensors": 2}
    assert results[0] == results[1]
    assert_copy(results[0][0], source)
