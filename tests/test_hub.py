"""The test hub speaks the protocol huggingface_hub expects, and its faults and counters work."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

from candle.demo.hub import CHUNK_SIZE, CONNECTION_SLOT_S, Fault, ListingOverride, LocalHub
from tests.conftest import GATED_REPO, HUB_TOKEN, RepoFactory


def test_listing_and_metadata_match_the_files(hub: LocalHub, make_repo: RepoFactory, repo_name):
    source = make_repo({"weights.safetensors": 3000}, {"config.json": b"{}", "a/b/c.txt": b"deep"})
    api = HfApi(endpoint=hub.endpoint)
    info = api.repo_info(repo_name)
    assert sorted(s.rfilename for s in info.siblings) == sorted(source)
    tree = {f.path: f for f in api.list_repo_tree(repo_name, recursive=True, revision=info.sha) if hasattr(f, "lfs")}
    weights = source["weights.safetensors"].read_bytes()
    assert tree["weights.safetensors"].lfs.sha256 == hashlib.sha256(weights).hexdigest()
    assert tree["config.json"].lfs is None
    assert tree["config.json"].blob_id == hashlib.sha1(b"blob 2\0{}").hexdigest()

    meta = get_hf_file_metadata(hf_hub_url(repo_name, "weights.safetensors", endpoint=hub.endpoint))
    assert (meta.commit_hash, meta.etag, meta.size) == (info.sha, tree["weights.safetensors"].lfs.sha256, 3000)


def test_range_requests_and_counters(hub: LocalHub, make_repo: RepoFactory, repo_name):
    source = make_repo({"weights.bin": 1000})
    url = hf_hub_url(repo_name, "weights.bin", endpoint=hub.endpoint)
    partial = httpx.get(url, headers={"Range": "bytes=100-199"})
    assert partial.status_code == 206
    assert partial.headers["Content-Range"] == "bytes 100-199/1000"
    assert partial.content == source["weights.bin"].read_bytes()[100:200]
    assert hub.stats.bodies[(repo_name, "weights.bin")] == 1
    assert hub.stats.body_bytes[(repo_name, "weights.bin")] == 100


def test_plain_huggingface_hub_download_works(hub: LocalHub, make_repo: RepoFactory, repo_name, tmp_path):
    source = make_repo({"model.safetensors": 5000})
    path = hf_hub_download(repo_name, "model.safetensors", cache_dir=tmp_path, endpoint=hub.endpoint)
    assert Path(path).read_bytes() == source["model.safetensors"].read_bytes()


def test_errors_use_the_hub_error_codes(hub: LocalHub, make_repo: RepoFactory, repo_name):
    make_repo()
    api = HfApi(endpoint=hub.endpoint)
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info("nobody/nothing")
    with pytest.raises(RevisionNotFoundError):
        api.repo_info(repo_name, revision="v999")
    with pytest.raises(GatedRepoError):
        api.repo_info(GATED_REPO)
    assert HfApi(endpoint=hub.endpoint, token=HUB_TOKEN).repo_info(GATED_REPO).sha


@pytest.mark.parametrize("kind", ["drop", "corrupt"])
def test_body_faults_spoil_exactly_the_configured_responses(hub: LocalHub, make_repo: RepoFactory, repo_name, kind):
    source = make_repo({"w.bin": 4096})
    hub.state.add_fault(Fault(kind, path="w.bin", times=1))
    url = hf_hub_url(repo_name, "w.bin", endpoint=hub.endpoint)
    with httpx.Client() as client:
        if kind == "drop":
            with pytest.raises(httpx.RemoteProtocolError):
                client.get(url)
        else:
            assert client.get(url).content != source["w.bin"].read_bytes()
        assert client.get(url).content == source["w.bin"].read_bytes()


def test_rate_limit_answers_retry_after(hub: LocalHub, make_repo: RepoFactory, repo_name):
    make_repo({"w.bin": 10})
    hub.state.add_fault(Fault("429", path="w.bin", retry_after=7))
    response = httpx.get(hf_hub_url(repo_name, "w.bin", endpoint=hub.endpoint))
    assert (response.status_code, response.headers["Retry-After"]) == (429, "7")


def test_each_connection_stays_under_the_rate_cap_by_the_hubs_own_accounting(
    hub: LocalHub, make_repo: RepoFactory, repo_name
):
    """A CDN's cap per connection: two connections at once, two bodies each on one kept-alive connection,
    and in every slot of the hub's accounting no connection sent more than the cap allows (the rate
    over the slot, plus a write begun before it and one after). Not a timing: a slow machine only
    sends less."""
    rate = 4 * 1024 * 1024
    data = make_repo({"w.bin": 3 * 1024 * 1024 // 2})["w.bin"].read_bytes()
    hub.state.bandwidth = rate
    url = hf_hub_url(repo_name, "w.bin", endpoint=hub.endpoint)

    def two_bodies(_: int) -> list[bytes]:
        with httpx.Client() as client:
            return [client.get(url).content for _ in range(2)]

    with ThreadPoolExecutor(2) as pool:
        bodies = [body for pair in pool.map(two_bodies, range(2)) for body in pair]

    assert bodies == [data] * 4
    per_connection: dict[int, dict[int, int]] = defaultdict(dict)
    for (connection, slot), sent in hub.stats.connection_bytes.items():
        per_connection[connection][slot] = sent
    assert len(per_connection) == 2, "two connections, each kept alive for its two bodies"
    for slots in per_connection.values():
        assert sum(slots.values()) == 2 * len(data)
        assert max(slots.values()) <= rate * CONNECTION_SLOT_S + 2 * CHUNK_SIZE, slots


def test_hub_refuses_non_loopback_addresses(tmp_path):
    with pytest.raises(ValueError, match="loopback"):
        LocalHub(tmp_path, host="0.0.0.0")


def test_faults_are_counted_per_file_and_kind(hub: LocalHub, make_repo: RepoFactory, repo_name):
    make_repo({"w.bin": 10})
    hub.state.add_fault(Fault("500", path="w.bin", times=2, retry_after=None))
    url = hf_hub_url(repo_name, "w.bin", endpoint=hub.endpoint)
    assert [httpx.get(url).status_code for _ in range(3)] == [500, 500, 200]
    assert hub.stats.faults == {(repo_name, "w.bin", "500"): 2}
    assert hub.stats.bodies[(repo_name, "w.bin")] == 1


def test_body_faults_of_one_response_combine_and_skip_lets_responses_through(
    hub: LocalHub, make_repo: RepoFactory, repo_name
):
    """A source that sends one wrong byte, then hangs up, then says it is busy: what a sourcing test needs."""
    data = make_repo({"w.bin": 4096})["w.bin"].read_bytes()
    for fault in (Fault("corrupt", at=0.25), Fault("drop", at=0.5), Fault("503", skip=1, times=None)):
        hub.state.add_fault(fault)
    url = hf_hub_url(repo_name, "w.bin", endpoint=hub.endpoint)
    received = bytearray()
    with pytest.raises(httpx.RemoteProtocolError), httpx.stream("GET", url) as response:
        for chunk in response.iter_bytes():
            received += chunk
    expected = bytearray(data[:2048])
    expected[1024] ^= 0xFF
    assert received == expected
    assert [httpx.get(url).status_code for _ in range(2)] == [503, 503]
    assert hub.stats.faults == {
        (repo_name, "w.bin", "corrupt"): 1,
        (repo_name, "w.bin", "drop"): 1,
        (repo_name, "w.bin", "503"): 2,
    }


def test_a_held_body_goes_on_only_once_released(hub: LocalHub, make_repo: RepoFactory, repo_name):
    data = make_repo({"w.bin": 1024 * 1024})["w.bin"].read_bytes()
    hold = hub.state.add_fault(Fault("hold", path="w.bin", at=0.5))
    url = hf_hub_url(repo_name, "w.bin", endpoint=hub.endpoint)
    received = bytearray()
    with httpx.stream("GET", url) as response:
        chunks = response.iter_bytes()
        while len(received) < len(data) // 2:
            received += next(chunks)
        assert hold.held.wait(30), "the body reached the hold"
        assert len(received) == len(data) // 2 and hub.stats.faults == {(repo_name, "w.bin", "hold"): 1}
        hold.release()
        for chunk in chunks:
            received += chunk
    assert received == data


def test_an_overflow_sends_more_than_the_file_and_announces_it(hub: LocalHub, make_repo: RepoFactory, repo_name):
    data = make_repo({"w.bin": 1024})["w.bin"].read_bytes()
    hub.state.add_fault(Fault("overflow", path="w.bin", extra=5000))
    response = httpx.get(hf_hub_url(repo_name, "w.bin", endpoint=hub.endpoint))
    assert response.headers["Content-Length"] == str(1024 + 5000)
    assert response.content == data + bytes(5000)
    assert hub.stats.faults == {(repo_name, "w.bin", "overflow"): 1}


def test_an_overflow_counts_as_fired_for_a_client_that_hangs_up_at_its_header(
    hub: LocalHub, make_repo: RepoFactory, repo_name
):
    """A careful client refuses the announced length and reads no body: the fault still struck."""
    make_repo({"w.bin": 4 * CHUNK_SIZE})
    hub.state.add_fault(Fault("overflow", path="w.bin", extra=64 * CHUNK_SIZE))
    with httpx.stream("GET", hf_hub_url(repo_name, "w.bin", endpoint=hub.endpoint)) as response:
        assert response.headers["Content-Length"] == str(68 * CHUNK_SIZE)
    assert hub.stats.faults == {(repo_name, "w.bin", "overflow"): 1}


def test_plain_mirror_answers_a_bare_404(hub: LocalHub, make_repo: RepoFactory, repo_name):
    make_repo()
    hub.state.plain_mirror = True
    for path in [
        "/api/models/nobody/nothing/revision/main",
        f"/api/models/{repo_name}/revision/v9",
        "/x/y/resolve/main/a",
    ]:
        response = httpx.get(hub.endpoint + path)
        assert response.status_code == 404 and "X-Error-Code" not in response.headers, path
    hub.reset()
    assert httpx.get(hub.endpoint + "/api/models/nobody/nothing").headers["X-Error-Code"] == "RepoNotFound"


def test_listing_override_is_served_through_every_endpoint(hub: LocalHub, make_repo: RepoFactory, repo_name):
    source = make_repo(texts={"config.json": b"{}"})
    hostile = ListingOverride(commit="f" * 40, aliases={"../evil": "config.json"}, fields={"config.json": {"size": -1}})
    hub.state.override_listing(repo_name, hostile)
    api = HfApi(endpoint=hub.endpoint)
    assert api.repo_info(repo_name).sha == "f" * 40
    tree = {f.path: f for f in api.list_repo_tree(repo_name, recursive=True, revision="f" * 40)}
    assert tree["config.json"].size == -1 and tree["../evil"].blob_id == tree["config.json"].blob_id
    response = httpx.get(hf_hub_url(repo_name, "config.json", revision="f" * 40, endpoint=hub.endpoint))
    assert response.headers["X-Repo-Commit"] == "f" * 40 and response.content == source["config.json"].read_bytes()
    hub.reset()
    assert api.repo_info(repo_name).sha != "f" * 40


def test_the_hub_reads_range_headers_itself():
    from candle.demo.hub import requested_range

    assert requested_range(None, 10) == (0, 10)
    assert requested_range("bytes=2-4", 10) == (2, 5)
    assert requested_range("bytes=7-", 10) == (7, 10)
    assert requested_range("bytes=-3", 10) == (7, 10)  # a suffix: the last three bytes
    assert requested_range("bytes=8-99", 10) == (8, 10)
    assert requested_range("bytes=12-", 10) == (10, 10)
    assert requested_range("items=1-2", 10) == (0, 10)
