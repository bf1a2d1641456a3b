"""Shared fixtures: one test hub and one local Ray cluster per test session.

The hub starts first so the Ray workers inherit ``HF_ENDPOINT`` pointing at it (the download
actors read the environment of their node). Every test gets a clean hub (no faults, zero counters)
and its own cache folder, and builds repos with unique names, so tests never share state.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import ray
from ray import serve

from candle.demo.hub import LocalHub, write_random_file, write_repo
from candle.testing import free_port
from candle.testing.cluster import start_local_ray

HUB_TOKEN = "hf_candle_test_secret_token_1234"
GATED_REPO = "gated/model"

# What every Ray worker of the test session must see; set before the cluster starts.
TEST_ENV = {
    "HF_HUB_DISABLE_XET": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "CANDLE_DOWNLOAD_STALL_TIMEOUT": "2",
    "CANDLE_DOWNLOAD_BACKOFF_BASE": "0.2",
    "CANDLE_DOWNLOAD_MAX_ATTEMPTS": "4",
    "CANDLE_DOWNLOAD_PEER_HOST": "127.0.0.1",  # peers talk over loopback in tests
}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark what a test needs from the fixtures it uses, so no mark can be forgotten: ``serve`` for
    Ray Serve on the session's cluster, ``ray`` for that cluster alone (``make check`` runs neither)."""
    for item in items:
        needs = getattr(item, "fixturenames", ())
        if "serve_base" in needs:
            item.add_marker(pytest.mark.serve)
        if "ray_cluster" in needs:
            item.add_marker(pytest.mark.ray)


@pytest.fixture(scope="session")
def hub_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hub-store")


@pytest.fixture(scope="session")
def hub_server(hub_store: Path) -> Iterator[LocalHub]:
    write_repo(hub_store, GATED_REPO, {"config.json": b'{"gated": true}'})
    with LocalHub(hub_store, gated={GATED_REPO}, tokens={HUB_TOKEN}) as hub:
        yield hub


@pytest.fixture
def hub(hub_server: LocalHub) -> Iterator[LocalHub]:
    hub_server.reset()
    yield hub_server
    hub_server.reset()


@pytest.fixture(scope="session")
def ray_cluster(hub_server: LocalHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    # Replicas fetch into the node's default cache: keep it in the session's temp folder.
    hf_cache = tmp_path_factory.mktemp("hf-cache")
    env = {**TEST_ENV, "HF_ENDPOINT": hub_server.endpoint, "HF_HUB_CACHE": str(hf_cache)}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    metrics_port = free_port()
    # "local": always a fresh cluster of our own, even when other Ray instances run on the machine.
    start_local_ray(
        num_cpus=4,
        include_dashboard=False,
        namespace="candle-tests",
        _metrics_export_port=metrics_port,
        _system_config={"metrics_report_interval_ms": 1000},
    )
    try:
        yield {
            **env,
            "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
            "METRICS_URL": f"http://127.0.0.1:{metrics_port}/metrics",
        }
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def serve_base(ray_cluster: dict[str, str]) -> Iterator[str]:
    """Ray Serve started once for the session, its HTTP proxy on a free loopback port; the base URL.

    Test modules deploy their own apps on it (distinct app names and route prefixes) and delete them.
    """
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


@pytest.fixture
def repo_name(request: pytest.FixtureRequest) -> str:
    """A repo id unique to the test, so caches and dedup keys never collide across tests."""
    return "test/" + re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:80].strip("-.")


RepoFactory = Callable[..., dict[str, Path]]


@pytest.fixture
def make_repo(hub_store: Path, repo_name: str) -> RepoFactory:
    """Create a repo in the hub store: small text files plus LFS weights of given sizes."""

    def make(weights: dict[str, int] | None = None, texts: dict[str, bytes] | None = None, repo_id: str | None = None):
        repo_id = repo_id or repo_name
        folder = write_repo(hub_store, repo_id, texts if texts is not None else {"config.json": b'{"hidden_size": 8}'})
        for seed, (name, size) in enumerate((weights or {}).items()):
            write_random_file(folder / name, size, seed=seed)
        return {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}

    return make
