"""The capability registry: what the catalog accepts, what load_engine loads and what the gateway routes."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from candle.catalog import Catalog
from candle.catalog.capabilities import REGISTRY, capabilities_for, resolve
from deployments.app import model_deployment


def test_an_engine_that_cannot_serve_the_capability_is_refused_at_load():
    entry = {"name": "minilm", "capability": "text-embedding", "repo_id": "x/y", "engine": "transformers"}
    with pytest.raises(ValidationError, match="minilm: engine 'transformers' cannot serve text-embedding"):
        Catalog.model_validate({"models": [entry]})
    Catalog.model_validate({"models": [{**entry, "engine": "sentence-transformers"}]})


@pytest.mark.parametrize("capability", list(REGISTRY))
def test_every_engine_implements_its_capabilitys_protocol(capability: str):
    info = REGISTRY[capability]
    assert {info.cpu_engine, info.gpu_engine} <= set(info.engines)
    protocol = info.protocol
    members = {n for n in dir(protocol) if not n.startswith("_")}
    members |= {n for cls in protocol.__mro__ for n in getattr(cls, "__annotations__", {}) if not n.startswith("_")}
    if capability in ("text-to-text", "vision"):
        assert {"chat", "streams"} <= members
    for path in info.engines.values():
        engine = resolve(path)
        missing = sorted(name for name in members if not hasattr(engine, name))
        assert missing == [], f"{path} lacks {missing} of {info.protocol.__name__}"


@pytest.mark.parametrize("capability", list(REGISTRY))
def test_each_capability_is_deployed_under_its_registered_name(capability: str):
    info = REGISTRY[capability]
    deployment = model_deployment(capability)
    assert deployment.name == info.deployment
    assert deployment.func_or_class is resolve(info.ingress or info.replica)
    # The class answering HTTP is the replica class (what pools and handles call) plus routes.
    assert issubclass(deployment.func_or_class, resolve(info.replica))
    assert (info.ingress is not None) == (capability in ("text-to-text", "vision"))


def test_routes_reach_the_capabilities_that_serve_them():
    assert capabilities_for("/v1/chat/completions") == ("text-to-text", "vision")
    assert capabilities_for("/v1/completions") == ("text-to-text",)
    assert capabilities_for("/v1/embeddings") == ("text-embedding", "image-embedding")
    assert capabilities_for("/v1/images/generations") == ("text-to-image",)
    assert capabilities_for("/v1/rerank") == capabilities_for("/v1/score") == ("rerank",)
