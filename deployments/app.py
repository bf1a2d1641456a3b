"""Application builders that ``serve_config.yaml`` imports: one app per model or pool, plus the gateway.

One Serve application per model lets each be redeployed, scaled or rolled back on its own
(``serve deploy`` only touches the apps whose config changed), and the gateway app finds each
model's deployment by name. Builders take Serve's ``args`` mapping, validated here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.serve import Application, Deployment

from candle.catalog import Capability, load_catalog
from candle.catalog.capabilities import REGISTRY, resolve
from candle.placement import deployment_options

from .front import GatewaySettings
from .gateway import Gateway
from .routing import POOL_DEPLOYMENT

# Imported by name, as the registry's replica classes are: building an app must not import torch.
POOL_REPLICA = "deployments.replicas.pool:PoolReplica"
GATEWAY_CPUS = 0.5
# The gateway only awaits model replicas: let it hold many requests, so they queue (and batch) at
# the models, which bound their own concurrency and answer 503 when full.
GATEWAY_MAX_ONGOING_REQUESTS = 1024


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")

    catalog: str | dict[str, Any] = "production"


class ModelAppArgs(Args):
    model: str
    # A chat model answers at its own base URL too, with the gateway's guards: give it the gateway's settings.
    gateway: GatewaySettings = GatewaySettings()


class PoolAppArgs(Args):
    pool: str


class GatewayAppArgs(Args):
    models: list[str] | None = None  # default: every model of the catalog
    gateway: GatewaySettings = GatewaySettings()
    num_replicas: int = 1


def build_model_app(args: dict[str, Any]) -> Application:
    """``args: {model: NAME, catalog: production | demo | PATH}``: the app serving one model."""
    parsed = ModelAppArgs.model_validate(args)
    spec = load_catalog(parsed.catalog).select([parsed.model]).models[0]
    if spec.pool:
        raise ValueError(f"{spec.name} is served by its pool's app: build_pool_app({{'pool': {spec.pool!r}}})")
    deployment = model_deployment(spec.capability).options(**deployment_options(spec))
    if REGISTRY[spec.capability].ingress:
        return deployment.bind(spec.model_dump(), parsed.gateway.model_dump())
    if "gateway" in parsed.model_fields_set:
        raise ValueError(
            f"{spec.name} answers only through the gateway (it has no base URL of its own), so settings "
            "under args.gateway would not apply to it: set them on the gateway's app"
        )
    return deployment.bind(spec.model_dump())


def build_pool_app(args: dict[str, Any]) -> Application:
    """``args: {pool: NAME, catalog}``: the app of one warm pool, serving every model that joins it."""
    parsed = PoolAppArgs.model_validate(args)
    catalog = load_catalog(parsed.catalog)
    pool = catalog.pools.get(parsed.pool)
    if pool is None:
        raise ValueError(f"no pool {parsed.pool!r} in the catalog (pools: {', '.join(catalog.pools) or 'none'})")
    deployment = serve.deployment(resolve(POOL_REPLICA), name=POOL_DEPLOYMENT)
    members = [m.model_dump() for m in catalog.pool_members(pool.name)]
    return deployment.options(**deployment_options(pool)).bind(pool.model_dump(), members)  # type: ignore[attr-defined]


def model_deployment(capability: Capability) -> Deployment:
    """The registry's replica class for ``capability`` (the one that also answers HTTP, if it has one),
    as the Serve deployment the gateway looks up."""
    info = REGISTRY[capability]
    return serve.deployment(resolve(info.ingress or info.replica), name=info.deployment)  # type: ignore[return-value]  # a class in: a Deployment out


def build_gateway_app(args: dict[str, Any]) -> Application:
    """``args: {catalog, models: [NAME...], gateway: {...}}``: the OpenAI-compatible HTTP front."""
    parsed = GatewayAppArgs.model_validate(args)
    catalog = load_catalog(parsed.catalog).select(parsed.models)
    # @serve.deployment made Gateway a Deployment; Serve's decorator hints lose that.
    return Gateway.options(  # type: ignore[attr-defined]
        num_replicas=parsed.num_replicas,
        max_ongoing_requests=GATEWAY_MAX_ONGOING_REQUESTS,
        ray_actor_options={"num_cpus": GATEWAY_CPUS},
    ).bind([m.model_dump() for m in catalog.models], parsed.gateway.model_dump())
