"""The private parts of huggingface_hub (and Ray) that candle relies on behave as candle assumes.

Each is used through one wrapper (``candle.download.hf_internals``, ``candle.download.cluster_kv``); a
release that renames or changes one fails here, by name, instead of deep inside a fetch. (The blob
lock's path is checked where it matters: tests/test_download_integrity.py proves hf_hub_download
waits on the lock candle holds.)
"""

from __future__ import annotations

import inspect
import io
import os

from huggingface_hub import hf_hub_url
from huggingface_hub.file_download import http_get

from candle.demo.hub import LocalHub
from candle.download import cluster_kv, hf_internals
from candle.download.coordinator import peer_secret
from candle.download.hf_internals import TreeCacheEntry
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


def test_http_get_resumes_into_a_file_and_reports_each_chunk(hub: LocalHub, make_repo: RepoFactory, repo_name):
    source = make_repo({"model.safetensors": 300_000})["model.safetensors"].read_bytes()

    class Counted:
        total = 0

        def update(self, n: int) -> None:
            self.total += n

    out, progress = io.BytesIO(source[:1000]), Counted()
    out.seek(1000)
    url = hf_hub_url(repo_name, "model.safetensors", endpoint=hub.endpoint)
    hf_internals.download_into(url, out, resume=1000, headers={}, size=len(source), progress=progress)
    assert out.getvalue() == source and progress.total == len(source) - 1000


def test_http_get_reads_the_tuned_constants_at_every_request():
    """tune_transfers sets module constants: they only matter while http_get reads them per call."""
    body = inspect.getsource(http_get)
    assert "constants.HF_HUB_DOWNLOAD_TIMEOUT" in body and "constants.DOWNLOAD_CHUNK_SIZE" in body


def test_the_peer_secret_is_kept_in_rays_key_value_store(ray_cluster):
    assert len(peer_secret()) >= 32 and peer_secret() == peer_secret()


def test_the_clusters_key_value_store_keeps_the_first_value(ray_cluster):
    assert cluster_kv.connected()
    key = f"candle/test/{os.getpid()}"
    assert cluster_kv.get(key) is None
    assert cluster_kv.put_if_absent(key, b"first") == b"first"
    assert cluster_kv.put_if_absent(key, b"second") == b"first"
    assert cluster_kv.get(key) == b"first"
