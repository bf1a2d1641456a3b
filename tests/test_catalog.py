"""The catalogs, the Serve configs generated from them, and the Serve options they translate to."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from candle.catalog import CAPABILITIES, load_catalog
from candle.placement import deployment_options
from candle.serve_config import build, render
from deployments.app import build_gateway_app, build_model_app

ROOT = Path(__file__).resolve().parents[1]
PRODUCTION = load_catalog("production")

DESIGN_REPOS = {
    "moonshotai/Kimi-K2-Instruct-0905",
    "microsoft/Phi-4-reasoning",
    "Qwen/Qwen3-Coder-30B-A3B-Instruct",
    "NovaSearch/stella_en_1.5B_v5",
    "Alibaba-NLP/gte-Qwen2-1.5B-instruct",
    "sentence-transformers/all-MiniLM-L6-v2",
    "jinaai/jina-embeddings-v2-base-en",
    "nvidia/NV-Embed-v2",
    "stabilityai/stable-diffusion-3.5-large-turbo",
    "black-forest-labs/FLUX.1-schnell",
    "openai/clip-vit-large-patch14",
    "llava-hf/llava-1.5-7b-hf",
}


def test_production_catalog_is_the_designed_twelve():
    assert {m.repo_id for m in PRODUCTION.models} == DESIGN_REPOS
    assert {m.capability for m in PRODUCTION.models} == set(CAPABILITIES)
    assert PRODUCTION.get("sd3.5-large-turbo").gated
    turbo = PRODUCTION.get("flux.1-schnell").defaults
    assert (turbo["num_inference_steps"], turbo["guidance_scale"], turbo["max_sequence_length"]) == (4, 0.0, 256)


def test_remote_code_models_fetch_their_code():
    remote = [m for m in PRODUCTION.models if m.trust_remote_code]
    assert {m.name for m in remote} >= {
        "kimi-k2",
        "jina-embeddings-v2-base-en",
        "nv-embed-v2",
        "gte-qwen2-1.5b-instruct",
    }
    for spec in remote:
        patterns = spec.fetch_allow_patterns()
        assert patterns is None or "*.py" in patterns, spec.name
        assert "*.py" not in (spec.ignore_patterns or ()), spec.name


def test_committed_serve_config_matches_the_catalog():
    committed = (ROOT / "serve_config.yaml").read_text()
    assert committed == render(build("production")), "regenerate: python -m candle.serve_config production"
    ServeDeploySchema.model_validate(yaml.safe_load(committed))


def test_every_production_app_builds_with_its_resources():
    for app in yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"]:
        builder = build_gateway_app if app["name"] == "gateway" else build_model_app
        assert builder(app["args"]) is not None
    sd3 = deployment_options(PRODUCTION.get("sd3.5-large-turbo"))["ray_actor_options"]
    assert sd3["num_gpus"] == 2 and sd3["label_selector"] == {"candle.io/node-class": "multi-gpu"}
    kimi = deployment_options(PRODUCTION.get("kimi-k2"))
    assert kimi["placement_group_strategy"] == "STRICT_PACK"
    assert sum(b.get("GPU", 0) for b in kimi["placement_group_bundles"]) == 8
    assert "num_gpus" not in kimi["ray_actor_options"]
    assert deployment_options(PRODUCTION.get("all-minilm-l6-v2"))["ray_actor_options"]["num_gpus"] == 0


def test_demo_catalog_has_every_capability_on_cpu():
    demo = load_catalog("demo")
    assert {m.capability for m in demo.models} == set(CAPABILITIES)
    assert all(m.resources.num_gpus == 0 for m in demo.models)


def test_catalog_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="unknown models"):
        build_model_app({"catalog": "production", "model": "gpt-9"})
    duplicate = {"name": "a", "capability": "vision", "repo_id": "x/y"}
    with pytest.raises(ValueError, match="repeated: a"):
        load_catalog({"models": [duplicate, duplicate]})
    with pytest.raises(ValueError, match="capability"):
        load_catalog({"models": [{**duplicate, "capability": "telepathy"}]})
    with pytest.raises(FileNotFoundError, match="built-in catalogs"):
        load_catalog(tmp_path / "missing.yaml")
