"""What candle trusts from a hub: a hostile listing writes nothing, and errors keep secrets and tell the truth.

The fetch tests go through the node's download actor against the test hub answering a hostile
listing through the real endpoints; the property tests drive the validator with arbitrary input.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from urllib.parse import quote

import pytest
from huggingface_hub import HfApi, hf_hub_url
from hypothesis import given, settings
from hypothesis import strategies as st

from candle.demo.hub import Fault, ListingOverride, LocalHub
from candle.download import DownloadError, DownloaderSettings, RepoNotFound, UnsafeListing, fetch
from candle.download.cache_layout import RepoCache
from candle.download.client import make_request
from candle.download.listing import list_repo, storage_folder
from candle.download.progress import FileProgress
from candle.download.redact import redact_text, redact_url
from candle.download.safe_names import check_commit, check_revision, path_problem
from candle.download.transfer import download_verified
from candle.testing import free_port
from tests.conftest import RepoFactory

MB = 1024 * 1024
SECRET = "s3cr3t-mirror-pass"
# Deep enough that every hostile path below, resolved from the repo's folder, stays under tmp_path.
CACHE = Path("a/b/c/d/cache")
ESCAPE = "zz/../../../../../evil"  # from snapshots/<commit>/: up to the cache's parent; sorts after config.json


def tree_of(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` (links not followed) with its type bits and size."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            st_ = os.lstat(os.path.join(folder, name))
            found[os.path.relpath(os.path.join(folder, name), root)] = (st_.st_mode >> 12, st_.st_size)
    return found


async def assert_refused_writing_nothing(repo_name: str, tmp_path: Path, entry: str, **options) -> str:
    """Fetch into ``tmp_path/CACHE``: it must raise UnsafeListing naming repo and entry, and write nothing."""
    cache = tmp_path / CACHE
    cache.mkdir(parents=True, exist_ok=True)
    before = tree_of(tmp_path)
    with pytest.raises(UnsafeListing) as excinfo:
        await fetch(repo_name, cache_dir=cache, **options)
    message = str(excinfo.value)
    assert repo_name in message and repr(entry) in message, message
    assert tree_of(tmp_path) == before
    return message


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize(
    "commit",
    ["../../../evil", "a" * 39, "A" * 40, "g" * 40, "a" * 40 + "/x"],
    ids=["traversal", "39-hex", "upper-hex", "non-hex", "suffix"],
)
async def test_a_hostile_commit_is_refused(hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path, commit):
    make_repo({"model.safetensors": 1 * MB})
    hub.state.override_listing(repo_name, ListingOverride(commit=commit))
    message = await assert_refused_writing_nothing(repo_name, tmp_path, commit)
    assert "commit" in message


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize(
    ("path", "named"),
    [(path, path) for path in [ESCAPE, "/abs/evil", "a\\b", "a//b", "./x", "x/", "x\x00y", "x\ny"]]
    + [("config.json/inner", "config.json")],  # a file and a folder: the file is named
    ids=[
        "escape",
        "absolute",
        "backslash",
        "empty-segment",
        "dot",
        "trailing-slash",
        "nul",
        "newline",
        "file-and-folder",
    ],
)
async def test_a_hostile_tree_path_is_refused(hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path, path, named):
    make_repo({"model.safetensors": 1 * MB})
    hub.state.override_listing(repo_name, ListingOverride(aliases={path: "config.json"}))
    await assert_refused_writing_nothing(repo_name, tmp_path, named)
    assert sum(hub.stats.bodies.values()) == 0


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize(
    ("path", "fields", "shown"),
    [
        ("config.json", {"oid": "z" * 40}, "z" * 40),
        ("config.json", {"oid": "../../../../../evil"}, "../../../../../evil"),
        ("config.json", {"size": -1}, -1),
        ("config.json", {"size": "12"}, "12"),
        ("model.safetensors", {"lfs": {"oid": "0" * 63, "size": MB, "pointerSize": 134}}, "0" * 63),
        ("model.safetensors", {"lfs": {"oid": "../" * 21 + "x", "size": MB, "pointerSize": 134}}, "../" * 21 + "x"),
    ],
    ids=["non-hex-oid", "traversal-oid", "negative-size", "text-size", "short-lfs-oid", "traversal-lfs-oid"],
)
async def test_hostile_checksums_and_sizes_are_refused(
    hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path, path, fields, shown
):
    make_repo({"model.safetensors": 1 * MB})
    hub.state.override_listing(repo_name, ListingOverride(fields={path: fields}))
    await assert_refused_writing_nothing(repo_name, tmp_path, shown)


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize(
    "revision",
    ["../../../evil", "/main", "refs//pr", "a\\b", "v1..2"],
    ids=["escape", "absolute", "empty-segment", "backslash", "dot-dot"],
)
async def test_an_unsafe_revision_is_refused(hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path, revision):
    make_repo()
    await assert_refused_writing_nothing(repo_name, tmp_path, revision, revision=revision)
    assert hub.stats.api_calls[repo_name] == 0


@pytest.mark.usefixtures("ray_cluster")
async def test_a_poisoned_tree_cache_is_refused(hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path):
    make_repo()
    commit = HfApi(endpoint=hub.endpoint).repo_info(repo_name).sha
    listed = HfApi(endpoint=hub.endpoint).list_repo_tree(repo_name, revision=commit)
    (entry,) = [{"size": f.size, "blob_id": f.blob_id} for f in listed if f.path == "config.json"]
    trees = tmp_path / CACHE / f"models--{repo_name.replace('/', '--')}" / "trees"
    trees.mkdir(parents=True)
    poisoned = {"format_version": 1, "files": {"config.json": entry, ESCAPE: entry}}
    (trees / f"{commit}.json").write_text(json.dumps(poisoned))
    await assert_refused_writing_nothing(repo_name, tmp_path, ESCAPE, revision=commit)
    assert sum(hub.stats.bodies.values()) == 0


@pytest.mark.usefixtures("ray_cluster")
async def test_an_honest_listing_with_odd_but_safe_names_is_fetched(
    hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path
):
    source = make_repo(texts={"config.json": b"{}", "dir.with.dots/..hidden/x y.txt": b"ok", "é/ü.json": b"[]"})
    snapshot = await fetch(repo_name, cache_dir=tmp_path)
    assert sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()) == sorted(source)


# -- errors say what the server answered, and never carry credentials ------------------------------


def closed_port_endpoint() -> str:
    return f"http://mirror-user:{SECRET}@127.0.0.1:{free_port()}"


def with_credentials(endpoint: str) -> str:
    return endpoint.replace("http://", f"http://mirror-user:{SECRET}@")


@pytest.mark.usefixtures("ray_cluster")
async def test_an_unreachable_mirror_is_named_without_its_credentials(tmp_path):
    endpoint = closed_port_endpoint()
    with pytest.raises(DownloadError) as excinfo:
        await fetch("test/anything", cache_dir=tmp_path, endpoint=endpoint)
    message = str(excinfo.value)
    assert "unreachable" in message and redact_url(endpoint) in message, message
    assert SECRET not in message and "mirror-user" not in message


def test_listing_logs_and_errors_carry_no_credentials(
    hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path, caplog
):
    make_repo()
    hub.state.plain_mirror = True
    caplog.set_level(logging.DEBUG)
    for endpoint, repo_id in [(closed_port_endpoint(), repo_name), (with_credentials(hub.endpoint), "test/missing")]:
        with pytest.raises(DownloadError) as excinfo:
            list_repo(make_request(repo_id, cache_dir=tmp_path, endpoint=endpoint))
        assert SECRET not in str(excinfo.value)
    assert [r for r in caplog.records if "127.0.0.1" in r.getMessage()], "no URL logged: this test would see no leak"
    assert not [r for r in caplog.records if SECRET in r.getMessage()]


def test_transfer_retry_logs_carry_no_credentials(hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path, caplog):
    source = make_repo({"model.safetensors": 1 * MB})
    endpoint = with_credentials(hub.endpoint)
    listing = list_repo(make_request(repo_name, cache_dir=tmp_path, endpoint=endpoint))
    (weights,) = [f for f in listing.files if f.path == "model.safetensors"]
    hub.state.add_fault(Fault("drop", path="model.safetensors"))
    caplog.set_level(logging.DEBUG)
    cache = RepoCache(storage_folder(make_request(repo_name, cache_dir=tmp_path)))
    download_verified(
        repo_id=repo_name,
        url=hf_hub_url(repo_name, weights.path, revision=listing.commit, endpoint=endpoint),
        headers={},
        f=weights,
        cache=cache,
        partial=cache.partial_path(weights),
        progress=FileProgress(weights.path, weights.size),
        settings=DownloaderSettings(),
    )
    assert cache.blob_path(weights).read_bytes() == source["model.safetensors"].read_bytes()
    assert hub.stats.faults == {(repo_name, "model.safetensors", "drop"): 1}
    assert [r for r in caplog.records if "Error while downloading from" in r.getMessage()]
    assert not [r for r in caplog.records if SECRET in r.getMessage()]


@pytest.mark.usefixtures("ray_cluster")
async def test_a_plain_mirror_404_is_reported_as_such(hub: LocalHub, tmp_path):
    hub.state.plain_mirror = True
    with pytest.raises(RepoNotFound) as excinfo:
        await fetch("test/not-on-this-mirror", cache_dir=tmp_path, endpoint=with_credentials(hub.endpoint))
    message = str(excinfo.value)
    assert "test/not-on-this-mirror" in message and "HTTP 404 from http://127.0.0.1:" in message, message
    assert "unreachable" not in message and SECRET not in message


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://user:tok@host:8080/api?x=1", "http://host:8080/api?x=1"),
        ("https://tok@host/p", "https://host/p"),
        (
            "https://host/p?token=hf_abc&a=b&X-Amz-Signature=s&sig=1",
            "https://host/p?token=***&a=b&X-Amz-Signature=***&sig=***",
        ),
        ("http://user:tok@[::1/x", "http://[::1/x"),
        ("http://host/plain", "http://host/plain"),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected


@settings(max_examples=200, deadline=None)
@given(
    st.text(min_size=1, max_size=20),
    st.text(alphabet="QZXJqzxj", min_size=6, max_size=20),
    st.sampled_from(["token", "access_token", "X-Amz-Signature", "api_key"]),
)
def test_a_redacted_url_holds_no_credentials(user, password, param):
    url = f"http://{quote(user, safe='')}:{password}@mirror.internal:8080/api?{param}={password}&a=1"
    for text in (url, f"GET {url} failed"):
        redacted = redact_text(text)
        assert password not in redacted and "mirror.internal:8080/api?" in redacted


# -- the validator, by property --------------------------------------------------------------------

SNAPSHOT = "/cache/models--o--n/snapshots/" + "0" * 40


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40) | st.lists(st.sampled_from(["..", ".", "", "a", "b.c", "/", "\\", "\x00"])).map("/".join))
def test_an_accepted_path_stays_inside_the_snapshot(path):
    if path_problem(path) is None:
        joined = os.path.normpath(os.path.join(SNAPSHOT, path))
        assert joined.startswith(SNAPSHOT + "/") and joined == os.path.join(SNAPSHOT, path)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\"), min_size=1, max_size=20),
        min_size=1,
        max_size=5,
    )
)
def test_plain_segments_make_an_accepted_path(segments):
    path = "/".join(segments)
    expected_ok = all(s not in (".", "..") and len(s.encode()) <= 255 for s in segments)
    assert (path_problem(path) is None) == expected_ok


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789abcdefABCDEFg", max_size=42))
def test_a_commit_is_accepted_iff_40_lowercase_hex(commit):
    ok = len(commit) == 40 and all(c in "0123456789abcdef" for c in commit)
    try:
        check_commit("o/n", commit)
    except UnsafeListing:
        assert not ok
    else:
        assert ok


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_an_accepted_revision_stays_inside_refs(revision):
    try:
        check_revision("o/n", revision)
    except UnsafeListing:
        return
    refs = "/cache/models--o--n/refs"
    assert os.path.normpath(os.path.join(refs, revision)).startswith(refs + "/")
    assert ".." not in revision and "\\" not in revision and not revision.startswith("/")


@pytest.mark.parametrize("revision", ["main", "v1.0", "refs/pr/1", "release-2024_01", "0" * 40])
def test_ordinary_revisions_are_accepted(revision):
    assert check_revision("o/n", revision) == revision


@pytest.mark.parametrize(
    "revision", ["..", "a/../b", ".hidden", "v1.lock", "x.", "@", "main@{1}", "a b", "a:b", "a*", "a\x7fb", "\udc80"]
)
def test_revisions_git_refuses_are_refused(revision):
    with pytest.raises(UnsafeListing, match="revision"):
        check_revision("o/n", revision)
