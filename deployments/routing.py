"""Which Serve deployment serves a model, and the handle that reaches it: the one place that knows.

A model has an application of its own (named after it), or belongs to a warm pool, whose one
application (named after the pool) serves all its models; requests then carry the model's name as
Serve's multiplexed model id, so Serve routes each to a pool replica holding that model (or one that
loads it). The gateway, its status collection and the batch job all ask here.
"""

from __future__ import annotations

from ray import serve
from ray.serve.handle import DeploymentHandle

from candle.catalog import ModelSpec
from candle.catalog.capabilities import REGISTRY

POOL_DEPLOYMENT = "ModelPool"


def deployment_of(spec: ModelSpec) -> tuple[str, str]:
    """``(application, deployment)`` serving ``spec``: its own, or its pool's."""
    if spec.pool:
        return spec.pool, POOL_DEPLOYMENT
    return spec.name, REGISTRY[spec.capability].deployment


def own_route_prefix(spec: ModelSpec) -> str | None:
    """Where ``spec``'s app answers HTTP itself (its own base URL is this plus ``/v1``): a chat model with
    an app of its own; None for the rest, which only the gateway reaches."""
    if spec.pool or REGISTRY[spec.capability].ingress is None:
        return None
    return f"/models/{spec.name}"


def model_handle(spec: ModelSpec) -> DeploymentHandle:
    """The handle whose methods (``embed_many``, ``rerank_many``, ``chat``, ``complete``, ``generate``) serve
    ``spec``: its deployment's, or its pool's with the model's id on every request."""
    app, deployment = deployment_of(spec)
    handle = serve.get_deployment_handle(deployment, app_name=app)
    return handle.options(multiplexed_model_id=spec.name) if spec.pool else handle
