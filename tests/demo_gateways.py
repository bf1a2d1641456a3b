"""The demo catalog's model apps on the session's Serve, behind gateway apps with settings a test module picks.

Model apps are named by model, as serve_config.yaml lays them out and as tests/test_api.py deploys
them: those already running are reused, so modules of one session share the replicas; each module
deploys its own gateway app at its own prefix and deletes it when done.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.api import RunTarget

from candle.catalog import load_catalog
from candle.demo.tiny_models import build_tiny_store
from candle.testing import wait_for_models
from deployments.app import build_gateway_app, build_model_app

DEMO = load_catalog("demo")
READY_TIMEOUT_S = 600


@contextmanager
def demo_gateway(
    serve_base: str, hub_store: Path, name: str, prefix: str, settings: dict[str, Any], headers: dict[str, str]
) -> Iterator[str]:
    """The base URL of a gateway app ``name`` at ``prefix`` with ``settings`` once every demo model is ready."""
    build_tiny_store(hub_store)
    running = set(serve.status().applications)
    apps = [
        RunTarget(build_model_app({"catalog": "demo", "model": m.name}), name=m.name, route_prefix=None)
        for m in DEMO.models
        if m.name not in running
    ]
    gateway = build_gateway_app({"catalog": "demo", "gateway": settings})
    apps.append(RunTarget(gateway, name=name, route_prefix=prefix))
    serve.run_many(apps, wait_for_applications_running=False)
    base = f"{serve_base}{prefix}"
    try:
        wait_for_models(base, {m.name: "ready" for m in DEMO.models}, READY_TIMEOUT_S, headers=headers)
        yield base
    finally:
        serve.delete(name, _blocking=False)
