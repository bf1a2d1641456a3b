"""What candle trusts from a hub: a hostile listing writes nothing, and errors keep secrets and tell the truth.

The fetch tests go through the node's download actor against the test hub answering a hostile
listing through the real endpoints; the property tests drive the validator with arbitrary input.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from huggingface_hub import HfApi, hf_hub_url
from hypothesis import given, settings
from hypothesis import strategies as st

from candle.demo.hub import Fault, ListingOverride, LocalHub
from candle.download import DownloadError, DownloaderSettings, IntegrityError, RepoNotFound, UnsafeListing, fetch
from candle.download.client import make_request
from candle.download.node.cache_layout import RepoCache
from candle.download.node.listing import ListingLimits, RemoteFile, RepoListing, list_repo, storage_folder
from candle.download.node.partial_file import PartialFile
from candle.download.node.progress import FileProgress
from candle.download.node.ranges import Links, Source
from candle.download.node.redact import redact_text, redact_url
from candle.download.node.safe_names import check_commit, check_revision, path_problem
from candle.download.node.transfer import download_verified
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


# -- a hostile body ---------------------------------------------------------------------------------


@dataclass
class ListedFile:
    """One file as ``endpoint`` lists it, its repo's cache folder, and a partial file of its own."""

    repo_id: str
    file: RemoteFile
    cache: RepoCache
    url: str
    partial: Path

    def download(self, settings: DownloaderSettings, progress: FileProgress | None = None) -> set[str]:
        links = Links(settings)
        try:
            return download_verified(
                repo_id=self.repo_id,
                sources=[Source(self.url)],
                cache=self.cache,
                partial=PartialFile(self.partial, self.file),
                progress=progress or FileProgress(self.file.path, self.file.size),
                settings=settings,
                links=links,
            )
        finally:
            links.close()


def listed_file(endpoint: str, repo_id: str, cache_dir: Path, path: str) -> ListedFile:
    listing = list_repo(make_request(repo_id, cache_dir=cache_dir, endpoint=endpoint))
    (f,) = [f for f in listing.files if f.path == path]
    cache = RepoCache(storage_folder(make_request(repo_id, cache_dir=cache_dir)))
    url = hf_hub_url(repo_id, path, revision=listing.commit, endpoint=endpoint)
    return ListedFile(repo_id, f, cache, url, cache.partial_path(f))


class PartialSizes(FileProgress):
    """Progress that records the partial file's size whenever a chunk is reported."""

    def __init__(self, path: str, total: int, partial: Path) -> None:
        super().__init__(path, total)
        self.partial = partial
        self.sizes: list[int] = []

    def update(self, n: int) -> None:
        self.sizes.append(self.partial.stat().st_size if self.partial.exists() else 0)
        super().update(n)


def test_a_source_sending_more_than_listed_never_grows_the_partial_past_it(
    hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path
):
    """A blob listed at 1,024 B, and a source that sends 64 MiB: it fills no disk, and it is to blame."""
    make_repo({"model.safetensors": 1024})
    weights = listed_file(hub.endpoint, repo_name, tmp_path, "model.safetensors")
    hub.state.add_fault(Fault("overflow", path="model.safetensors", extra=64 * MB, times=None))
    progress = PartialSizes(weights.file.path, weights.file.size, weights.partial)
    with pytest.raises(IntegrityError, match=r"more than the listed 1,024 bytes on 2 attempts"):
        weights.download(DownloaderSettings(max_attempts=2, backoff_base=0.01), progress)
    assert max(progress.sizes, default=0) <= weights.file.size
    assert hub.stats.faults == {(repo_name, "model.safetensors", "overflow"): 2}
    assert hub.stats.body_bytes[(repo_name, "model.safetensors")] < 64 * MB, "the connection was dropped early"
    assert not weights.cache.blob_path(weights.file).exists()
    partial = weights.partial
    assert (partial.stat().st_size if partial.exists() else 0) == 0, "what the source sent was dropped"


def test_an_empty_file_listed_with_a_wrong_checksum_fails_its_attempts(
    hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path
):
    """No bytes, so no source wrote any: still that source's failure, never a mix to sort out forever."""
    make_repo(texts={"empty.txt": b""})
    hub.state.override_listing(repo_name, ListingOverride(fields={"empty.txt": {"oid": "f" * 40}}))
    empty = listed_file(hub.endpoint, repo_name, tmp_path, "empty.txt")
    outcome: list[BaseException] = []

    def attempt() -> None:
        try:
            empty.download(DownloaderSettings(max_attempts=2))
        except BaseException as e:  # handed to the test
            outcome.append(e)

    worker = threading.Thread(target=attempt, daemon=True)  # daemon: a loop must not hang the test run
    worker.start()
    worker.join(60)  # a guard against a loop, not a measurement
    assert not worker.is_alive(), "the transfer kept starting over"
    assert len(outcome) == 1 and isinstance(outcome[0], IntegrityError) and "on 2 attempts" in str(outcome[0])


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
    weights = listed_file(with_credentials(hub.endpoint), repo_name, tmp_path, "model.safetensors")
    hub.state.add_fault(Fault("drop", path="model.safetensors"))
    caplog.set_level(logging.DEBUG)
    weights.download(DownloaderSettings())
    assert weights.cache.blob_path(weights.file).read_bytes() == source["model.safetensors"].read_bytes()
    assert hub.stats.faults == {(repo_name, "model.safetensors", "drop"): 1}
    assert [r for r in caplog.records if "127.0.0.1" in r.getMessage() and "retrying" in r.getMessage()]
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


def _listing(hub: LocalHub, repo_name: str, tmp_path: Path, limits: ListingLimits | None = None) -> RepoListing:
    request = make_request(repo_name, cache_dir=tmp_path / "cache", endpoint=hub.endpoint)
    return list_repo(request, limits or ListingLimits())


def test_a_paged_listing_is_followed_to_its_end(hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path):
    source = make_repo({"a.safetensors": 1024, "b.safetensors": 1024}, texts={"config.json": b"{}", "x/y.txt": b"y"})
    hub.state.override_listing(repo_name, ListingOverride(page_size=1))
    listing = _listing(hub, repo_name, tmp_path)
    assert sorted(f.path for f in listing.files) == sorted(source)
    assert hub.stats.api_calls[repo_name] == 1 + 5  # repo_info, then one page per entry (4 files, 1 folder)


def test_an_endless_paged_listing_stops_at_the_page_bound(hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path):
    make_repo({"model.safetensors": 1024})
    hub.state.override_listing(repo_name, ListingOverride(page_size=1, endless=True))
    with pytest.raises(UnsafeListing, match=rf"^{repo_name}: .*tree listing has more than 20 pages"):
        _listing(hub, repo_name, tmp_path, ListingLimits(max_pages=20))
    assert hub.stats.api_calls[repo_name] == 1 + 20, "no page past the bound is asked for"
    assert not (tmp_path / "cache").exists()


def test_a_listing_with_too_many_entries_is_refused_before_its_end(
    hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path
):
    make_repo({"model.safetensors": 1024})
    aliases = {f"copy-{i:04d}.json": "config.json" for i in range(200)}
    hub.state.override_listing(repo_name, ListingOverride(aliases=aliases, page_size=10))
    with pytest.raises(UnsafeListing, match=rf"^{repo_name}: .*tree listing has more than 25 entries"):
        _listing(hub, repo_name, tmp_path, ListingLimits(max_entries=25))
    assert hub.stats.api_calls[repo_name] == 1 + 3, "the pages past the bound are never asked for"


@pytest.mark.usefixtures("ray_cluster")
async def test_a_listing_claiming_more_bytes_than_any_model_is_refused(
    hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path
):
    make_repo({"model.safetensors": 1024})
    huge = {"size": 2**62, "lfs": {"oid": "0" * 64, "size": 2**62, "pointerSize": 134}}
    hub.state.override_listing(repo_name, ListingOverride(fields={"model.safetensors": huge}))
    message = await assert_refused_writing_nothing(repo_name, tmp_path, "model.safetensors")
    assert "tree listing claims more than" in message
