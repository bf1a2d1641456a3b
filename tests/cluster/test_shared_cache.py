"""Shared-cache mode (HF_HOME on a network filesystem): one node downloads, the others wait and link."""

from __future__ import annotations

import pytest
import ray

from candle.testing.cluster import simulated_cluster
from candle.testing.hub import TestHub
from tests.cluster.test_downloads import ENV, NODES, assert_copy, fetch_on_node, make_repo, on

pytestmark = pytest.mark.cluster

MB = 1024 * 1024


def test_shared_cache_downloads_once_and_every_node_sees_it(tmp_path_factory: pytest.TempPathFactory):
    with TestHub(tmp_path_factory.mktemp("shared-store")) as hub:
        source = make_repo(hub.state.root, "shared/model", {f"part-{i}.safetensors": 3 * MB for i in range(2)})
        shared = tmp_path_factory.mktemp("shared-hf")
        env = {
            **ENV,
            "HF_ENDPOINT": hub.endpoint,
            "HF_HOME": str(shared),
            "HF_HUB_CACHE": str(shared / "hub"),
            "CANDLE_DOWNLOAD_SHARED_CACHE": "1",
        }
        with simulated_cluster(NODES, env) as (_, ids):
            results = ray.get(
                [fetch_on_node.options(scheduling_strategy=on(node)).remote("shared/model", 3) for node in ids.values()]
            )
        assert hub.stats.bodies_for("shared/model") == dict.fromkeys(source, 1)
        assert len({p for paths in results for p in paths}) == 1
        assert_copy(results[0][0], source)
