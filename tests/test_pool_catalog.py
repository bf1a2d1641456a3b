"""Warm pools in the catalog: how a pool is declared and joined, what is refused, and the Serve
config and options generated for it (a pool is one Serve application; its models get none)."""

from __future__ import annotations

import pytest
from ray.serve.schema import ServeDeploySchema

from candle.catalog import load_catalog
from candle.catalog.capabilities import REGISTRY, resolve
from candle.download.config import MODEL_RUNTIME_ENV_VAR
from candle.placement import deployment_options, hosting_nodes
from candle.serve_config import build
from deployments.app import build_model_app, build_pool_app
from deployments.replicas.pool import PoolReplica
from deployments.routing import POOL_DEPLOYMENT, deployment_of
from tests.test_catalog import served_options
from tests.test_placement_rules import NODES

POOL = {"resources": {"num_cpus": 2, "memory_gb": 8}, "max_models_per_replica": 4, "idle_after_s": 30}
ENV = {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}


def entry(name: str, capability: str = "text-embedding", **fields: object) -> dict[str, object]:
    return {"name": name, "capability": capability, "repo_id": f"o/{name}", **fields}


CATALOG = {
    "pools": {"small": POOL | {"runtime_env": ENV}},
    "models": [
        entry("minilm", pool="small"),
        entry("clip", "image-embedding", pool="small"),
        entry("chat", "text-to-text", pool="small"),
        entry("sd3", "text-to-image", pool="small"),
        entry("alone"),
    ],
}


def test_a_pooled_entry_takes_its_pools_replicas_resources_and_libraries():
    catalog = load_catalog(CATALOG)
    minilm, alone = catalog.get("minilm"), catalog.get("alone")
    assert (minilm.resources.num_cpus, minilm.resources.memory_gb, minilm.runtime_env) == (2, 8, ENV)
    assert alone.resources.num_cpus == 1 and alone.pool is None
    assert [m.name for m in catalog.pool_members("small")] == ["minilm", "clip", "chat", "sd3"]
    # Where its replicas can land is where the pool's can: what the prefetch job warms.
    assert hosting_nodes(minilm, NODES) == hosting_nodes(catalog.pools["small"], NODES)
    assert deployment_of(minilm) == ("small", POOL_DEPLOYMENT)
    assert deployment_of(alone) == ("alone", REGISTRY["text-embedding"].deployment)
    # A subset keeps the pools its models join, and only those.
    assert list(catalog.select(["clip"]).pools) == ["small"] and catalog.select(["alone"]).pools == {}
    # Entries round-trip (the gateway and the pool's replicas get them dumped).
    assert load_catalog({"pools": CATALOG["pools"], "models": [m.model_dump() for m in catalog.models]}) == catalog


def test_the_demo_pools_catalog_puts_the_demo_models_in_two_pools():
    demo, pooled = load_catalog("demo"), load_catalog("demo-pools")
    assert {m.name: m.pool for m in pooled.models} == {
        "all-minilm-l6-v2": "embedders",
        "clip-vit-tiny": "embedders",
        "qwen3-coder-tiny": "generators",
        "sd3.5-turbo-tiny": "generators",
    }
    for model in pooled.models:  # the demo's own entries, but for what their pool decides
        assert model.repo_id == demo.get(model.name).repo_id and model.limits == demo.get(model.name).limits
        assert model.resources == pooled.pools[model.pool].resources


def test_a_pool_is_one_serve_app_and_its_models_get_none():
    apps = {app["name"]: app for app in build(CATALOG)["applications"]}
    assert set(apps) == {"gateway", "alone", "small"}
    assert apps["small"]["import_path"] == "deployments.app:build_pool_app"
    assert apps["small"]["args"] == {"catalog": CATALOG, "pool": "small"}
    assert apps["small"]["runtime_env"] == ENV
    ServeDeploySchema.model_validate(build(CATALOG))
    served = served_options(build_pool_app({"catalog": CATALOG, "pool": "small"}))
    expected = deployment_options(load_catalog(CATALOG).pools["small"])
    assert served == expected
    assert served["ray_actor_options"]["num_cpus"] == 2 and served["ray_actor_options"]["memory"] == 8 * 1024**3
    assert served["ray_actor_options"]["runtime_env"]["env_vars"][MODEL_RUNTIME_ENV_VAR] == "small"
    assert served["max_queued_requests"] == 160  # its own queue: 10 s of 16 slots at 1 s a request
    with pytest.raises(ValueError, match="minilm is served by its pool's app"):
        build_model_app({"catalog": CATALOG, "model": "minilm"})
    with pytest.raises(ValueError, match=r"no pool 'big' in the catalog \(pools: small\)"):
        build_pool_app({"catalog": CATALOG, "pool": "big"})


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"models": [entry("a", pool="large")]}, r"a: pool 'large' is not declared under pools \(declared: none\)"),
        ({"pools": {"p": {}}, "models": [entry("a")]}, r"pools p: no model joins them"),
        ({"pools": {"a": {}}, "models": [entry("a", pool="a")]}, "pools a: named like a model"),
        ({"pools": {"p": {"name": "q"}}, "models": [entry("a", pool="p")]}, "pools.p: name is the pool's key, not 'q'"),
        (
            {"pools": {"p": {}}, "models": [entry("a", pool="p", resources={"num_cpus": 4})]},
            "a: resources is decided by its pool: set it under pools.p",
        ),
        (
            {"pools": {"p": {}}, "models": [entry("a", pool="p", autoscaling={"min_replicas": 0})]},
            "a: autoscaling is decided by its pool",
        ),
        (
            {"pools": {"p": {}}, "models": [entry("a", pool="p", max_ongoing_requests=64)]},
            "a: max_ongoing_requests is decided by its pool",
        ),
        (
            {"pools": {"p": {}}, "models": [entry("a", "text-to-text", pool="p", engine="vllm")]},
            r"a: engine 'vllm' cannot join pool 'p': it cannot load and unload models in a shared process "
            r"\(pooled text-to-text engines: transformers\)",
        ),
        (
            {"pools": {"p": {"resources": {"num_gpus": 1}}}, "models": [entry("a", "vision", pool="p")]},
            r"a: engine 'vllm' \(what `auto` picks on the pool's GPUs\) cannot join pool 'p'",
        ),
        (
            {
                "pools": {"p": {"resources": {"num_gpus": 2, "tensor_parallel_size": 2}}},
                "models": [entry("a", pool="p")],
            },
            "pools.p: a pool replica is one process: tensor_parallel_size and pipeline_parallel_size must stay 1",
        ),
        (
            {"pools": {"p": {"num_replicas": 2, "autoscaling": {}}}, "models": [entry("a", pool="p")]},
            "pools.p: set num_replicas or autoscaling, not both",
        ),
        (
            {"pools": {"p": {"max_models_per_replica": 0}}, "models": [entry("a", pool="p")]},
            "greater than or equal to 1",
        ),
        ({"pools": {"p": {"idle_after_s": 0}}, "models": [entry("a", pool="p")]}, "greater than 0"),
        (
            {
                "pools": {"p": {"runtime_env": {"env_vars": {"HF_TOKEN": "hf_secretvalue123"}}}},
                "models": [entry("a", pool="p")],
            },
            "runtime_env env_vars.HF_TOKEN looks like a secret",
        ),
    ],
)
def test_what_a_pool_cannot_do_is_refused_with_what_to_change(change: dict, error: str):
    with pytest.raises(ValueError, match=error) as refused:
        load_catalog(change)
    assert "secretvalue123" not in str(refused.value)


def test_a_pooled_entry_may_repeat_its_pools_values_or_name_a_poolable_engine():
    pool = {"p": {"resources": {"num_cpus": 0.5, "num_gpus": 1}}}
    same = entry("a", "text-to-text", pool="p", resources={"num_cpus": 0.5, "num_gpus": 1}, engine="transformers")
    assert load_catalog({"pools": pool, "models": [same]}).get("a").resources.num_gpus == 1


def test_the_pool_replica_offers_every_call_of_each_poolable_capability():
    """Pooled models are served by their capability's replica class, through the pool replica's methods
    of the same names: a capability that can be pooled needs each of them there."""
    for capability, info in REGISTRY.items():
        if not info.pool_engines:
            continue
        replica = resolve(info.replica)
        calls = {name for name in vars(replica) if not name.startswith("_") and callable(getattr(replica, name))}
        calls -= {"serving", "embed_calls", "rerank_calls"}  # its constructor for pools; in-process passes
        assert calls <= set(vars(PoolReplica)), (capability, sorted(calls - set(vars(PoolReplica))))
