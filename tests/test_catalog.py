"""The catalogs, the Serve configs generated from them, and the Serve options they translate to."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from ray.serve import Application
from ray.serve._private.build_app import build_app
from ray.serve.schema import ServeDeploySchema

from candle import serve_config
from candle.catalog import CAPABILITIES, load_catalog
from candle.download.config import MODEL_RUNTIME_ENV_VAR
from candle.placement import deployment_options
from candle.serve_config import build, render
from deployments.app import GATEWAY_CPUS, build_gateway_app, build_model_app
from deployments.front import GatewaySettings
from tests.repo_files import CODE, CONFIG, SAFETENSORS, selected

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
    "BAAI/bge-reranker-v2-m3",  # issue 26: the reranker retrieval users serve beside their embedder
    "jinaai/jina-reranker-v2-base-multilingual",
}


def test_production_catalog_is_the_designed_fourteen():
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
        "jina-reranker-v2-base-multilingual",
    }
    for spec in remote:
        kept = selected(spec.fetch_allow_patterns(), spec.ignore_patterns)
        assert kept == {*CODE, *SAFETENSORS, *CONFIG}, spec.name  # code and config, weights in one format


def test_an_allow_list_of_a_remote_code_model_still_fetches_its_code():
    spec = PRODUCTION.get("nv-embed-v2").model_copy(update={"allow_patterns": ("*.json", "*.safetensors")})
    kept = selected(spec.fetch_allow_patterns(), spec.ignore_patterns)
    assert kept == {*CODE, *SAFETENSORS, *(f for f in CONFIG if f.endswith(".json"))}


def test_committed_serve_config_matches_the_catalog():
    committed = (ROOT / "serve_config.yaml").read_text()
    assert committed == render(build("production")), "regenerate: python -m candle.serve_config production"
    ServeDeploySchema.model_validate(yaml.safe_load(committed))


def test_chat_models_and_only_they_answer_at_their_own_base_url():
    routes = {app["name"]: app["route_prefix"] for app in build("production")["applications"]}
    assert routes.pop("gateway") == "/"
    chat = {m.name for m in PRODUCTION.models if m.capability in ("text-to-text", "vision") and m.pool is None}
    assert chat == {"kimi-k2", "phi-4-reasoning", "qwen3-coder", "llava-1.5-7b"}
    assert routes == {name: f"/models/{name}" if name in chat else None for name in routes}


def test_one_front_settings_block_reaches_the_gateway_and_every_chat_model():
    front = {"max_body_bytes": 1 << 20, "require_api_keys": True, "remote_image_allowed_networks": ["10.0.0.0/8"]}
    config = build("production", front=GatewaySettings.model_validate(front))
    ServeDeploySchema.model_validate(config)
    apps = {app["name"]: app for app in config["applications"]}
    fronts = {name for name, app in apps.items() if app["route_prefix"] is not None}
    assert fronts == {"gateway", "kimi-k2", "phi-4-reasoning", "qwen3-coder", "llava-1.5-7b"}
    assert {name: apps[name]["args"]["gateway"] for name in fronts} == dict.fromkeys(fronts, front)
    assert not any("gateway" in app["args"] for name, app in apps.items() if name not in fronts)
    assert served_options(build_model_app(apps["qwen3-coder"]["args"]))  # what Serve will build from it
    assert not any("gateway" in app["args"] for app in build("production")["applications"])


def test_front_settings_are_checked_before_a_config_is_generated():
    with pytest.raises(ValidationError, match="max_body_bytes_in_flight"):
        GatewaySettings.model_validate({"max_body_bytes": 1 << 20, "max_body_bytes_in_flight": 1 << 19})
    with pytest.raises(ValidationError, match="api_key_env"):
        GatewaySettings.model_validate({"api_key_env": "MY_KEYS"})  # a misspelt option is not ignored


def test_the_generator_takes_front_settings_from_a_file_and_refuses_a_bad_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    good, bad = tmp_path / "fronts.yaml", tmp_path / "typo.yaml"
    good.write_text("max_body_bytes: 1048576\nrequire_api_keys: true\n")
    bad.write_text("max_body_byte: 1048576\n")
    monkeypatch.setattr(sys, "argv", ["serve_config", "production", "--front-settings", str(good)])
    serve_config.main()
    apps = {app["name"]: app for app in yaml.safe_load(capsys.readouterr().out)["applications"]}
    assert apps["gateway"]["args"]["gateway"] == {"max_body_bytes": 1048576, "require_api_keys": True}
    assert apps["qwen3-coder"]["args"]["gateway"] == apps["gateway"]["args"]["gateway"]
    monkeypatch.setattr(sys, "argv", ["serve_config", "production", "--front-settings", str(bad)])
    with pytest.raises(SystemExit) as exited:
        serve_config.main()
    assert exited.value.code == 2
    assert capsys.readouterr() == (
        "",
        f"candle.serve_config: error: {bad}: max_body_byte: Extra inputs are not permitted\n",
    )


def test_a_model_without_its_own_url_refuses_front_settings():
    args = {"catalog": "production", "model": "all-minilm-l6-v2", "gateway": {"max_body_bytes": 1 << 20}}
    with pytest.raises(ValueError, match="all-minilm-l6-v2 answers only through the gateway"):
        build_model_app(args)


def served_options(app: Application) -> dict[str, Any]:
    """What Serve deploys for an app's one deployment, in ``deployment_options``' terms.

    ``build_app`` is what ``serve build`` and ``serve run`` turn an application into; Serve keeps the
    placement-group options on the deployment's replica config (one label selector per bundle).
    """
    (deployment,) = build_app(app, name="app").deployments
    replica = deployment._replica_config
    options: dict[str, Any] = {
        "num_replicas": deployment.num_replicas,
        "max_ongoing_requests": deployment.max_ongoing_requests,
        "max_queued_requests": deployment.max_queued_requests,
        "ray_actor_options": deployment.ray_actor_options,
    }
    if deployment.backpressure_config is not None:
        options["backpressure_config"] = {"retry_after_s": deployment.backpressure_config.retry_after_s}
    if replica.placement_group_bundles:
        options["placement_group_bundles"] = replica.placement_group_bundles
        options["placement_group_strategy"] = replica.placement_group_strategy
    if replica.placement_group_bundle_label_selector:
        options["placement_group_bundle_label_selector"] = replica.placement_group_bundle_label_selector
    return options


def per_bundle(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with a single bundle label selector repeated for every bundle, as Serve stores it."""
    selectors = options.get("placement_group_bundle_label_selector")
    if selectors and len(selectors) == 1:
        return {**options, "placement_group_bundle_label_selector": selectors * len(options["placement_group_bundles"])}
    return options


def test_every_production_app_builds_with_its_resources():
    for app in yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"]:
        if app["name"] == "gateway":
            served = served_options(build_gateway_app(app["args"]))
            assert (served["num_replicas"], served["ray_actor_options"]) == (2, {"num_cpus": GATEWAY_CPUS})
            continue
        expected = deployment_options(PRODUCTION.get(app["args"]["model"]))
        assert served_options(build_model_app(app["args"])) == per_bundle(expected), app["name"]
    sd3 = deployment_options(PRODUCTION.get("sd3.5-large-turbo"))["ray_actor_options"]
    assert sd3["num_gpus"] == 2 and sd3["label_selector"] == {"candle.io/node-class": "multi-gpu"}
    kimi = deployment_options(PRODUCTION.get("kimi-k2"))
    assert kimi["placement_group_strategy"] == "PACK"  # pipeline stages over two nodes
    assert sum(b.get("GPU", 0) for b in kimi["placement_group_bundles"]) == 16
    assert "num_gpus" not in kimi["ray_actor_options"]
    assert deployment_options(PRODUCTION.get("all-minilm-l6-v2"))["ray_actor_options"]["num_gpus"] == 0


# Remote-code entries left on a branch, each with the reason no commit is pinned (in the catalog's comment).
UNPINNED_REMOTE_CODE = {"kimi-k2"}  # no public source for a commit of moonshotai/Kimi-K2-Instruct-0905


def test_remote_code_runs_at_a_pinned_commit_or_says_loudly_it_does_not(caplog: pytest.LogCaptureFixture):
    remote = [m for m in PRODUCTION.models if m.trust_remote_code]
    unpinned = {m.name for m in remote if not re.fullmatch(r"[0-9a-f]{40}", m.revision or "")}
    assert unpinned == UNPINNED_REMOTE_CODE  # a new entry on a branch must be pinned, or listed here with why
    assert {m.name for m in remote if m.unpinned_remote_code()} == unpinned
    # Loading a catalog with one warns once per process and entry, naming model, repo and branch.
    entry = {"name": "moving", "capability": "text-embedding", "repo_id": "o/code", "trust_remote_code": True}
    with caplog.at_level(logging.WARNING, logger="candle.catalog.schema"):
        load_catalog({"models": [entry]})
        load_catalog({"models": [entry]}).select(["moving"])
        load_catalog({"models": [entry | {"revision": "a" * 40}]})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("moving: trust_remote_code runs the code of o/code at branch 'main', not a commit")


def test_a_model_runtime_env_goes_on_its_app_and_deployment_only():
    env = {"pip": ["six==1.16.0"], "env_vars": {"CANDLE_PIN": "1"}}
    models = [{"name": n, "capability": "text-embedding", "repo_id": f"o/{n}"} for n in ("pinned", "plain")]
    models[0]["runtime_env"] = env
    catalog = {"models": models}
    apps = {app["name"]: app for app in build(catalog)["applications"]}
    assert apps["pinned"]["runtime_env"] == env
    assert "runtime_env" not in apps["plain"] and "runtime_env" not in apps["gateway"]
    pinned = served_options(build_model_app({"catalog": catalog, "model": "pinned"}))
    # The replica is marked as running under its model's libraries (candle/download/cluster/factory.py).
    marked = env | {"env_vars": {"CANDLE_PIN": "1", MODEL_RUNTIME_ENV_VAR: "pinned"}}
    assert pinned["ray_actor_options"]["runtime_env"] == marked
    plain = served_options(build_model_app({"catalog": catalog, "model": "plain"}))
    assert "runtime_env" not in plain["ray_actor_options"]
    ServeDeploySchema.model_validate(build(catalog))
    with pytest.raises(ValueError, match="runtime_env may set conda, env_vars, pip, uv, not working_dir"):
        load_catalog({"models": [models[1] | {"runtime_env": {"working_dir": "."}}]})


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


def test_an_autoscaled_entry_deploys_with_serve_autoscaling():
    scaling = {
        "min_replicas": 0,
        "max_replicas": 3,
        "downscale_delay_s": 5,
        "look_back_period_s": 2,
        "metrics_interval_s": 0.5,
    }
    scaled = {"name": "a", "capability": "text-embedding", "repo_id": "x/y", "autoscaling": scaling}
    (deployment,) = build_app(build_model_app({"catalog": {"models": [scaled]}, "model": "a"}), name="a").deployments
    config = deployment._deployment_config.autoscaling_config
    # Deploying starts one replica anyway: it brings the weights into the node's cache.
    assert (config.min_replicas, config.initial_replicas, config.max_replicas) == (0, 1, 3)
    assert (config.target_ongoing_requests, config.downscale_delay_s) == (2.0, 5.0)
    assert (config.look_back_period_s, config.metrics_interval_s) == (2.0, 0.5)
    spec = load_catalog({"models": [scaled]}).models[0]
    assert spec.limits.cold_start_timeout_s == 120.0
    # Queued as for one replica (16 slots, 10 s budget, 1 s a request), which a cold start waits for.
    assert deployment.max_queued_requests == 160


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"num_replicas": 2}, "a: set num_replicas or autoscaling, not both"),
        ({"autoscaling": {"min_replicas": 2, "max_replicas": 1}}, r"max_replicas \(1\) is below min_replicas \(2\)"),
        ({"autoscaling": {"min_replicas": -1}}, "greater than or equal to 0"),
        ({"autoscaling": {"min_replica": 0}}, "Extra inputs are not permitted"),
        (
            {"autoscaling": {"look_back_period_s": 5}},
            r"look_back_period_s \(5\) must be longer than metrics_interval_s \(10\)",
        ),
    ],
)
def test_autoscaling_contradictions_are_refused(extra, error):
    entry = {"name": "a", "capability": "text-embedding", "repo_id": "x/y", "autoscaling": {"min_replicas": 0}}
    with pytest.raises(ValueError, match=error):
        load_catalog({"models": [{**entry, **extra}]})


@pytest.mark.parametrize(
    ("runtime_env", "named"),
    [
        ({"env_vars": {"HF_TOKEN": "hf_secretvalue123"}}, "env_vars.HF_TOKEN"),
        ({"env_vars": {"OPENAI_API_KEY": "sk-secretvalue123"}}, "env_vars.OPENAI_API_KEY"),
        ({"pip": ["--extra-index-url https://me:secretvalue123@pypi.example/simple", "six"]}, "pip"),
        ({"uv": {"packages": ["six"], "uv_pip_install_options": ["--index-url=https://me:secretvalue123@x/"]}}, "uv"),
    ],
)
def test_a_secret_in_a_model_runtime_env_is_refused_without_echoing_it(runtime_env: dict, named: str):
    """A runtime_env is shown by Ray's dashboard and ``serve status``: a token there is a token leaked.
    Replicas need none (the node's downloader fetches with the node's HF_TOKEN)."""
    entry = {"name": "m", "capability": "text-embedding", "repo_id": "o/m", "runtime_env": runtime_env}
    with pytest.raises(ValueError, match=f"runtime_env {re.escape(named)}") as refused:
        load_catalog({"models": [entry]})
    assert "secretvalue123" not in str(refused.value)
    load_catalog({"models": [entry | {"runtime_env": {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}}]})


# A runtime_env secret is found by its name or by its value, wherever it sits, and never echoed back.
SECRET_VALUE = "Zq8secretvalue7Kp"
_SECRET_WORDS = ["TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", "PASS", "PWD", "PAT", "APIKEY", "CREDENTIALS", "AUTH"]


def _refusal(runtime_env: dict) -> str:
    entry = {"name": "m", "capability": "text-embedding", "repo_id": "o/m", "runtime_env": runtime_env}
    with pytest.raises(ValueError, match=r"looks like a secret|with credentials|looks like a token") as refused:
        load_catalog({"models": [entry]})
    return str(refused.value)


@pytest.mark.parametrize(
    ("runtime_env", "named"),
    [
        ({"env_vars": {"HF_ENDPOINT": f"https://user:{SECRET_VALUE}@mirror.example"}}, "env_vars.HF_ENDPOINT"),
        ({"env_vars": {"HF_ENDPOINT": f"https://{SECRET_VALUE}@mirror.example/"}}, "env_vars.HF_ENDPOINT"),
        ({"env_vars": {"PIP_INDEX_URL": f"https://me:{SECRET_VALUE}@pypi.example/simple"}}, "env_vars.PIP_INDEX_URL"),
        ({"env_vars": {"UV_INDEX_URL": f"https://pypi.example/simple?token={SECRET_VALUE}"}}, "env_vars.UV_INDEX_URL"),
        ({"pip": [f"--index-url=https://pypi.example/simple?token={SECRET_VALUE}", "six"]}, "pip"),
        ({"pip": [f"--extra-index-url https://pypi.example/simple/?x=1&access_token={SECRET_VALUE}"]}, "pip"),
        ({"uv": {"packages": [f"six @ git+https://{SECRET_VALUE}@github.com/o/six"]}}, "uv"),
        ({"env_vars": {"GITHUB_PAT": SECRET_VALUE}}, "env_vars.GITHUB_PAT"),
        ({"env_vars": {"DB_PASS": SECRET_VALUE}}, "env_vars.DB_PASS"),
        ({"env_vars": {"OPENAI_APIKEY": SECRET_VALUE}}, "env_vars.OPENAI_APIKEY"),
        ({"env_vars": {"wandbApiKey": SECRET_VALUE}}, "env_vars.wandbApiKey"),
        ({"env_vars": {"MY_SETTING": f"hf_{SECRET_VALUE}abcdefghijklmnopq"}}, "env_vars.MY_SETTING"),
    ],
)
def test_a_secret_in_a_runtime_env_value_or_name_is_refused_without_echoing_it(runtime_env: dict, named: str):
    message = _refusal(runtime_env)
    assert f"runtime_env {named} " in message
    assert SECRET_VALUE not in message


_NAME_WORD = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.lists(_NAME_WORD, max_size=3),
    word=st.sampled_from(_SECRET_WORDS),
    lower=st.booleans(),
    digits=st.sampled_from(["", "2", "_2"]),
)
def test_any_name_whose_word_is_a_secret_word_is_refused(prefix: list[str], word: str, lower: bool, digits: str):
    name = "_".join([*prefix, word]) + digits
    name = name.lower() if lower else name
    message = _refusal({"env_vars": {name: SECRET_VALUE}})
    assert f"env_vars.{name} " in message and SECRET_VALUE not in message


_URL_PART = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~", min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    scheme=st.sampled_from(["https", "http", "git+https", "s3"]),
    user=st.one_of(st.none(), _URL_PART),
    host=_URL_PART,
    path=st.lists(_URL_PART, max_size=3),
    field=st.sampled_from(["env_vars", "pip", "uv", "conda"]),
    where=st.sampled_from(["userinfo", "query"]),
    param=st.sampled_from(["token", "access_token", "api_key", "X-Amz-Signature", "sig", "password", "auth"]),
)
def test_any_url_carrying_credentials_is_refused_in_every_field(scheme, user, host, path, field, where, param):
    base = f"{host}/{'/'.join(path)}"
    userinfo = f"{user}:{SECRET_VALUE}" if user else SECRET_VALUE
    url = f"{scheme}://{userinfo}@{base}" if where == "userinfo" else f"{scheme}://{base}?v=1&{param}={SECRET_VALUE}"
    setting = {
        "env_vars": {"INDEX": url},
        "pip": [f"--index-url={url}"],
        "uv": {"uv_pip_install_options": ["--index-url", url]},
        "conda": {"channels": [url]},
    }[field]
    message = _refusal({field: setting})
    assert SECRET_VALUE not in message
    assert f"runtime_env {field}" in message


@pytest.mark.parametrize(
    "env_vars",
    [
        {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2", "KEYBOARD_LAYOUT": "us", "PATH_EXTRA": "/opt"},
        {"HF_ENDPOINT": "https://mirror.example/hub", "PIP_INDEX_URL": "https://pypi.example/simple?page=2"},
        {"PASSTHROUGH": "1", "BYPASS_CACHE": "1", "PATHS": "a:b"},
    ],
)
def test_plain_settings_pass_the_secret_check(env_vars: dict):
    entry = {"name": "m", "capability": "text-embedding", "repo_id": "o/m", "runtime_env": {"env_vars": env_vars}}
    load_catalog({"models": [entry]})


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"code_revisions": {"../etc": "a" * 40}}, r"code_revisions: '../etc' is not a repo id"),
        ({"code_revisions": {"o/code": "main"}}, r"code_revisions.o/code must be a 40-hex commit"),
        ({"trust_remote_code": False, "code_revisions": {"o/code": "a" * 40}}, "code_revisions without trust_remote"),
    ],
)
def test_code_revisions_name_repos_and_commits_of_remote_code(extra: dict, error: str):
    entry = {"name": "m", "capability": "text-embedding", "repo_id": "o/m", "trust_remote_code": True}
    with pytest.raises(ValueError, match=error):
        load_catalog({"models": [entry | extra]})
    pinned = load_catalog({"models": [entry | {"code_revisions": {"o/code": "a" * 40}}]}).models[0]
    assert pinned.code_revisions == {"o/code": "a" * 40}
