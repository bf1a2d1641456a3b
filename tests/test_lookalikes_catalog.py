"""The ``demo-all`` catalog stays in step with production: the same models under the same names, served
through the same fields, only smaller (see the catalog's header for what differs and why)."""

from __future__ import annotations

import pytest

from candle.catalog import load_catalog
from candle.catalog.capabilities import REGISTRY
from candle.demo.tiny_models import TINY_MODELS
from candle.engines import engine_kind
from deployments.app import GATEWAY_CPUS

PRODUCTION, DEMO_ALL = load_catalog("production"), load_catalog("demo-all")
# Not ``revision``: production pins the real repos' commits, which the look-alike repos do not have.
SERVING_FIELDS = (
    "capability",
    "engine",
    "trust_remote_code",
    "allow_patterns",
    "ignore_patterns",
    "prompts",
    "defaults",
    "limits",
    "max_ongoing_requests",
)
NAMES = [m.name for m in PRODUCTION.models]


def test_demo_all_serves_productions_models_under_their_names():
    assert [m.name for m in DEMO_ALL.models] == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_each_look_alike_is_served_through_productions_fields(name: str):
    production, demo = PRODUCTION.get(name), DEMO_ALL.get(name)
    assert {f: getattr(demo, f) for f in SERVING_FIELDS} == {f: getattr(production, f) for f in SERVING_FIELDS}
    assert demo.repo_id in TINY_MODELS.values()


@pytest.mark.parametrize("name", NAMES)
def test_engine_args_are_productions_except_vllms_on_a_cpu(name: str):
    """Where production runs vLLM and a CPU runs transformers, vLLM's arguments (parsers, context,
    memory) would break the transformers engine's from_pretrained; all other entries keep them."""
    production, demo = PRODUCTION.get(name), DEMO_ALL.get(name)
    vllm_in_production_only = REGISTRY[production.capability].gpu_engine == "vllm" and engine_kind(demo, 0) != "vllm"
    assert demo.engine_args == ({} if vllm_in_production_only else production.engine_args)


def test_the_fourteen_and_the_gateway_fit_two_cores():
    assert sum(m.resources.num_cpus * m.num_replicas for m in DEMO_ALL.models) + GATEWAY_CPUS <= 2
    assert all(m.resources.num_gpus == 0 for m in DEMO_ALL.models)
