"""The offline local demo: tiny models behind the real API, on CPU, with no Hub access.

``candle demo`` builds the tiny model store (cached), serves it with the local Hub look-alike on loopback,
points ``HF_ENDPOINT`` at it, writes a Serve config for the demo catalog and hands over to a real
``serve run`` of that config: every replica fetches its weights through the download service, as
in production, and the OpenAI-compatible API comes up on ``http://127.0.0.1:PORT/v1``.

The default demo serves one small model per capability (``candle/catalog/demo.yaml``); with
``--all-models`` it serves a look-alike of each of the fourteen production models under production's
names and serving fields (``candle/catalog/demo-all.yaml``); with ``--catalog FILE`` it serves a
user's own catalog, whose entries name repos the demo hub holds, so anyone can try their own
resources, limits, autoscaling or pools without writing a config generator.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from candle.serve_config import build, render

DEMO_HOME = Path(os.environ.get("CANDLE_DEMO_HOME", Path.home() / ".cache" / "candle" / "demo"))


def run(
    port: int = 8000,
    home: Path = DEMO_HOME,
    all_models: bool = False,
    catalog_file: Path | None = None,
    metrics_port: int | None = None,
) -> int:
    """Build, serve the hub, and ``serve run`` the demo until Ctrl-C; returns serve's exit code.

    Ray's Prometheus endpoint listens on ``metrics_port`` (one Ray picks if None); the demo prints its URL."""
    from candle.demo.hub import LocalHub

    catalog = str(catalog_file.resolve()) if catalog_file else "demo-all" if all_models else "demo"
    check_demo_repos(catalog)
    home.mkdir(parents=True, exist_ok=True)
    print(f"candle demo: building the tiny model store in {home / 'store'} (cached after the first run)", flush=True)
    build_store_for(catalog, home / "store")
    config_path = home / "serve_config.yaml"
    config = build(catalog, port=port, host="127.0.0.1", proxy_location="HeadOnly", gateway_replicas=1)
    config_path.write_text(render(config))
    prefixes = [app["route_prefix"] for app in config["applications"][1:] if app["route_prefix"]]
    own = [f"http://127.0.0.1:{port}{prefix}/v1" for prefix in prefixes]
    with LocalHub(home / "store") as hub:
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.endpoint,
            "HF_HUB_CACHE": str(home / "hf-cache"),
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
        print(f"candle demo: hub {hub.endpoint}; API on http://127.0.0.1:{port}/v1 once models are ready", flush=True)
        print(f"candle demo: try  curl http://127.0.0.1:{port}/v1/models", flush=True)
        if own:
            print(f"candle demo: chat models also answer at their own base URLs: {', '.join(own)}", flush=True)
        # Serve's CLI under this interpreter: a venv layered over another (vLLM's) has no `serve` script.
        command = [sys.executable, "-m", "candle.demo.serve_run", str(config_path), str(metrics_port or 0)]
        return _run_until_interrupted(command, env)


def check_demo_repos(catalog: str) -> None:
    """Refuse, before anything starts, a catalog naming repos the demo hub does not hold: their
    replicas would only fail to fetch once the cluster is up."""
    from candle.catalog import load_catalog
    from candle.demo.tiny_models import TINY_MODELS

    missing = sorted({m.repo_id for m in load_catalog(catalog).models} - set(TINY_MODELS.values()))
    if missing:
        raise ValueError(
            f"the demo hub holds no repo {', '.join(missing)}; it serves: {', '.join(sorted(TINY_MODELS.values()))}"
        )


def build_store_for(catalog: str, store: Path) -> None:
    """The tiny repos ``catalog`` serves, and the code repos their auto_maps name (Jina's second repo).

    Imported here, as in ``run``: importing ``candle.demo.hub`` must not read huggingface_hub's
    settings before a caller has pointed ``HF_ENDPOINT`` at the hub it starts.
    """
    from candle.catalog import load_catalog
    from candle.demo.tiny_models import TINY_MODELS, build_tiny_store
    from candle.download.remote_code import code_repos

    def names(repos: set[str]) -> list[str]:
        return [name for name, repo in TINY_MODELS.items() if repo in repos]

    built = build_tiny_store(store, names({m.repo_id for m in load_catalog(catalog).models}))
    build_tiny_store(store, names({repo for folder in built.values() for repo in code_repos(folder)}))


def _run_until_interrupted(command: list[str], env: dict[str, str]) -> int:
    """Run ``command`` in its own process group and hand Ctrl-C (or SIGTERM) on to it alone; its exit code.

    A terminal's Ctrl-C signals the whole foreground process group. When ``serve run`` shared it,
    Ray's dashboard and runtime-env agents got the signal too and outlived the cluster (orphans
    after every demo); signalled alone, ``serve run`` shuts its local cluster down cleanly. A second
    Ctrl-C kills it.
    """
    # A shell's background job inherits SIGINT ignored, and exec keeps it so: ``serve run`` would
    # then ignore the SIGINT handed to it. Handled here, it is the default again in the child.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # A process group of its own, not a session: Linux makes each session a scheduling group of its
    # own (autogroup), which shares the CPU out per group, not per process; on a 2-core machine a
    # server in a session apart from its client streamed 8x fewer tokens/s (benchmarks/results/
    # peers.md). Writes to the terminal from a background group must not stop it (``stty tostop``):
    # SIGTTOU stays ignored, as ignored signals do across exec.
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    process = subprocess.Popen(command, env=env, process_group=0)
    signal.signal(signal.SIGTERM, lambda *_: process.send_signal(signal.SIGINT))
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.kill()
        return process.wait()
