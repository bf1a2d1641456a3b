"""The private parts of huggingface_hub (and Ray) that candle relies on behave as candle assumes.

Each is used through one wrapper (``candle.download.node.hf_internals``, ``candle.download.cluster.kv``,
``deployments.replicas.serve_multiplex``); a release that renames or changes one fails here, by name,
instead of deep inside a fetch or a pool replica. (The blob
lock's path is checked where it matters: tests/test_download_integrity.py proves hf_hub_download
waits on the lock candle holds.)
"""

from __future__ import annotations

import inspect
import os
import types

import pytest
from huggingface_hub import HfApi

from candle.demo.hub import ListingOverride, LocalHub
from candle.download.cluster import kv
from candle.download.cluster.coordinator import peer_secret
from candle.download.node import hf_internals
from candle.download.node.hf_internals import TreeCacheEntry
from deployments.replicas import serve_multiplex
from tests.conftest import RepoFactory

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_tree_cache_round_trips(tmp_path):
    tree = {
        "config.json": TreeCacheEntry(size=2, blob_id="a" * 40, lfs_sha256=None, lfs_size=None),
        "model.safetensors": TreeCacheEntry(size=9, blob_id="b" * 40, lfs_sha256="c" * 64, lfs_size=9),
    }
    hf_internals.write_tree(tmp_path, COMMIT, tree)
    assert hf_internals.read_tree(tmp_path, COMMIT) == tree
    assert hf_internals.read_tree(tmp_path, "f" * 40) is None


def test_snapshot_links_are_relative_symlinks_to_the_blob(tmp_path):
    blob = tmp_path / "blobs" / ("d" * 64)
    blob.parent.mkdir()
    blob.write_bytes(b"weights")
    pointer = tmp_path / "snapshots" / COMMIT / "sub" / "model.safetensors"
    pointer.parent.mkdir(parents=True)
    hf_internals.link_blob(blob, pointer)
    assert pointer.is_symlink() and not os.path.isabs(os.readlink(pointer))
    assert pointer.resolve() == blob.resolve() and pointer.read_bytes() == b"weights"


def test_refs_record_a_branch_and_skip_a_commit(tmp_path):
    hf_internals.record_ref(tmp_path, "main", COMMIT)
    assert (tmp_path / "refs" / "main").read_text() == COMMIT
    hf_internals.record_ref(tmp_path, COMMIT, COMMIT)
    assert sorted(p.name for p in (tmp_path / "refs").iterdir()) == ["main"]


def test_the_peer_secret_is_kept_in_rays_key_value_store(ray_cluster):
    assert len(peer_secret()) >= 32 and peer_secret() == peer_secret()


def test_the_clusters_key_value_store_keeps_the_first_value(ray_cluster):
    assert kv.connected()
    key = f"candle/test/{os.getpid()}"
    assert kv.get(key) is None
    assert kv.put_if_absent(key, b"first") == b"first"
    assert kv.put_if_absent(key, b"second") == b"first"
    assert kv.get(key) == b"first"


def test_the_clusters_key_value_store_keeps_records_up_to_date(ray_cluster):
    prefix = f"candle/test-records/{os.getpid()}/"
    kv.put(prefix + "a", b"1")
    kv.put(prefix + "b", b"2")
    kv.put(prefix + "a", b"3")
    kv.put(prefix.rstrip("/") + "-other", b"not under the prefix")
    assert kv.scan(prefix) == {prefix + "a": b"3", prefix + "b": b"2"}
    kv.delete(prefix + "a")
    assert kv.scan(prefix) == {prefix + "b": b"2"}


def test_serve_keeps_a_replicas_multiplexed_models_where_candle_reads_and_unloads_them():
    """The names serve_multiplex.py uses, without a replica (tests/test_pools.py unloads through them on
    real Serve): the attribute ``@serve.multiplexed`` sets on the replica, its wrapper's LRU-ordered
    models, load lock, push flag and LRU unload."""
    from ray.serve import api, multiplex

    assert f'"{serve_multiplex.WRAPPER}"' in inspect.getsource(api.multiplexed)
    init = inspect.getsource(multiplex._ModelMultiplexWrapper.__init__)
    for needed in ("self.models = OrderedDict()", "self._model_cache_lock = ", "self._push_multiplexed_replica_info"):
        assert needed in init, needed
    assert inspect.iscoroutinefunction(multiplex._ModelMultiplexWrapper.unload_model_lru)


def test_a_changed_multiplexed_model_cache_fails_loudly():
    replica = types.SimpleNamespace()
    assert serve_multiplex.multiplexed_cache(replica) is None  # before its first load
    setattr(replica, serve_multiplex.WRAPPER, types.SimpleNamespace(models={}, unload_model_lru=None))
    with pytest.raises(
        RuntimeError,
        match=r"Ray Serve \S+ changed its model multiplexing internals \(missing: _model_cache_lock, "
        r"_push_multiplexed_replica_info\): update deployments/replicas/serve_multiplex.py",
    ):
        serve_multiplex.multiplexed_cache(replica)


def test_tree_pages_are_the_hubs_pages_each_marked_last_or_not(hub: LocalHub, make_repo: RepoFactory, repo_name):
    make_repo({"model.safetensors": 1024})
    hub.state.override_listing(repo_name, ListingOverride(page_size=1))
    pages = list(hf_internals.tree_pages(HfApi(endpoint=hub.endpoint), repo_name, revision="main", repo_type="model"))
    assert [(len(page), last) for page, last in pages] == [(1, False), (1, True)]
    assert {item.path for page, _ in pages for item in page} == {"config.json", "model.safetensors"}
