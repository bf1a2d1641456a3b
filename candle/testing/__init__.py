"""Helpers for tests, benchmarks and the offline demo: a Hub look-alike and tiny model stores."""

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx


def free_port() -> int:
    """A loopback port nobody listens on right now (for test hubs, Serve's proxy, metrics)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def interrupt(process: subprocess.Popen[Any], timeout_s: float = 120) -> None:
    """Stop a server started in a process group of its own as Ctrl-C would (SIGINT to the group, so
    ``candle demo`` shuts its cluster down), killing the group if it has not ended in ``timeout_s``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_for_models(
    base: str, expected: Mapping[str, str], timeout: float = 600, headers: Mapping[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """Poll the gateway at ``base`` until each named model's ``/v1/models`` state is the expected one
    (e.g. ``{"qwen3": "ready"}``); return the listing by model id. One of them failed (unless expected
    to), or a timeout, raises with the states seen, so a test says what went wrong instead of hanging."""
    deadline = time.monotonic() + timeout
    cards: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        try:
            cards = {m["id"]: m for m in httpx.get(f"{base}/v1/models", headers=headers, timeout=10).json()["data"]}
        except (httpx.HTTPError, KeyError, ValueError):  # the gateway is not up yet
            time.sleep(1)
            continue
        states = {name: card["status"]["state"] for name, card in cards.items()}
        if all(states.get(name) == state for name, state in expected.items()):
            return cards
        failed = {name: cards[name]["status"] for name in expected if name in cards and states[name] == "failed"}
        if failed := {name: status for name, status in failed.items() if expected[name] != "failed"}:
            raise AssertionError(f"models failed to start: {failed}")
        time.sleep(1)
    raise AssertionError(f"models not in {dict(expected)} after {timeout}s: {cards}")


@contextmanager
def catalog_apps(
    catalog: Mapping[str, Any], gateway: str, route_prefix: str, settings: Mapping[str, Any] | None = None
) -> Iterator[None]:
    """Each model of ``catalog`` as its own Serve app (each pool as one, for its models) behind a gateway
    app named ``gateway`` (with the gateway ``settings`` given) at ``route_prefix``, as serve_config.yaml
    lays them out, on the running Serve instance; deleted on exit. Returns without waiting for the
    models: callers wait for the states they expect."""
    from ray import serve
    from ray.serve.api import RunTarget

    from deployments.app import build_gateway_app, build_model_app, build_pool_app

    own = [model["name"] for model in catalog["models"] if not model.get("pool")]
    pools = list(catalog.get("pools") or {})
    names = [*own, *pools]
    apps = [RunTarget(build_model_app({"catalog": catalog, "model": n}), name=n, route_prefix=None) for n in own]
    apps += [RunTarget(build_pool_app({"catalog": catalog, "pool": p}), name=p, route_prefix=None) for p in pools]
    gateway_app = build_gateway_app({"catalog": catalog, "gateway": dict(settings or {})})
    apps.append(RunTarget(gateway_app, name=gateway, route_prefix=route_prefix))
    serve.run_many(apps, wait_for_applications_running=False)
    try:
        yield
    finally:
        for app in [gateway, *names]:
            serve.delete(app, _blocking=False)


def replica_processes(app: str) -> list[Any]:
    """The live worker processes (``psutil.Process``) of one Serve app's replicas on this machine.

    Ray titles each replica's process ``ray::ServeReplica:<app>:<deployment>...``, which is what lets a
    test see where a replica runs (its GPU memory, its child processes) without the dashboard.
    """
    import psutil  # a dev dependency: only tests look at processes

    prefix = f"ray::ServeReplica:{app}:"
    return [p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [""])[0].startswith(prefix)]
