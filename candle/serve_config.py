"""Serve configs generated from a catalog, so the config and the catalog cannot drift apart.

Layout: the gateway app at ``/``, one app per model (the gateway reaches each through a deployment
handle; a chat model's app also answers at its own base URL, ``/models/NAME/v1``, the rest have no
HTTP route), and one app per warm pool, which serves its models (they get no app of their own).
``python -m candle.serve_config production`` prints the production config; the committed
``serve_config.yaml`` is checked against it by the tests.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from candle.catalog import load_catalog
from deployments.front import GatewaySettings
from deployments.routing import own_route_prefix

HEADER = """\
# candle's production Ray Serve config: `serve run serve_config.yaml` or `serve deploy serve_config.yaml`.
# Generated from candle/catalog/production.yaml by `python -m candle.serve_config production`;
# edit the catalog (models, resources, engine arguments) and regenerate; a test keeps the two in step.
# Secrets (HF_TOKEN for gated repos, CANDLE_API_KEYS) come from the nodes' environment, never from this file.
"""


# Two gateway replicas: the API stays up while Serve replaces one, and requests spread over two
# processes (Serve's ingress path alone costs an ingress replica about 4 ms of CPU per request, measured
# with a bare FastAPI ingress and handle on a 2-core machine: one replica stays below 200 requests/s).
GATEWAY_REPLICAS = 2


def build(
    catalog: str | dict[str, Any],
    *,
    port: int = 8000,
    host: str = "0.0.0.0",
    proxy_location: str = "EveryNode",
    gateway_replicas: int = GATEWAY_REPLICAS,
    front: GatewaySettings | None = None,
) -> dict[str, Any]:
    """``front``: the HTTP fronts' settings (``GatewaySettings``), written as ``args.gateway`` into every
    app that answers HTTP (the gateway and each chat model's own base URL), so that no front is left
    with other keys or limits than the rest."""
    loaded = load_catalog(catalog)
    fronts: dict[str, Any] = {} if front is None else {"gateway": front.model_dump(mode="json", exclude_unset=True)}
    gateway = {
        "name": "gateway",
        "route_prefix": "/",
        "import_path": "deployments.app:build_gateway_app",
        "args": {"catalog": catalog, "num_replicas": gateway_replicas, **fronts},
    }
    # (name, route prefix, builder, its args, runtime_env): the app's own libraries, for its builder too
    # (the deployment gets them from placement).
    own = [
        (m.name, prefix, "build_model_app", {"model": m.name, **(fronts if prefix else {})}, m.runtime_env)
        for m in loaded.models
        if m.pool is None
        for prefix in [own_route_prefix(m)]
    ]
    pools = [(p.name, None, "build_pool_app", {"pool": p.name}, p.runtime_env) for p in loaded.pools.values()]
    apps = [
        {
            "name": name,
            "route_prefix": prefix,
            "import_path": f"deployments.app:{builder}",
            "args": {"catalog": catalog, **args},
            **({"runtime_env": runtime_env} if runtime_env else {}),
        }
        for name, prefix, builder, args, runtime_env in [*own, *pools]
    ]
    return {
        "proxy_location": proxy_location,
        "http_options": {"host": host, "port": port},
        "applications": [gateway, *apps],
    }


def render(config: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(config, sort_keys=False)


def main() -> None:
    parser = argparse.ArgumentParser(description="Print a Serve config for a catalog.")
    parser.add_argument("catalog", help="built-in catalog name (production, demo) or a YAML path")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument(
        "--front-settings",
        type=Path,
        help="YAML mapping of the HTTP fronts' settings (API keys, body limits, remote images, timeout), "
        "written into the gateway's app and every chat model's",
    )
    args = parser.parse_args()
    front = None
    if args.front_settings:
        try:
            front = GatewaySettings.model_validate(yaml.safe_load(args.front_settings.read_text()))
        except ValidationError as e:  # one line naming each bad setting, not pydantic's block
            bad = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg']}" for err in e.errors())
            parser.exit(2, f"candle.serve_config: error: {args.front_settings}: {bad}\n")
        except (OSError, yaml.YAMLError) as e:
            parser.exit(2, f"candle.serve_config: error: {args.front_settings}: {str(e).splitlines()[0]}\n")
    print(render(build(args.catalog, port=args.port, host=args.host, front=front)), end="")


if __name__ == "__main__":
    main()
