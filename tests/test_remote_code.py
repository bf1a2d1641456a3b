"""Remote code through the download service: the repos a config's ``auto_map`` names are fetched with
the model (verified, cached, once), so a node loads it with ``HF_HUB_OFFLINE=1`` after a prefetch."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import ray
import torch
from huggingface_hub.errors import HFValidationError
from safetensors.torch import load_file
from transformers import PreTrainedModel

from candle.catalog import load_catalog
from candle.demo.hub import LocalHub
from candle.demo.remote_code import modeling_bert, modeling_nvembed, modeling_qwen
from candle.demo.tiny_models import TINY_MODELS, build_tiny_store
from candle.download.client import make_request
from candle.download.remote_code import FetchedModel, code_repos, fetch_model
from candle.jobs import prefetch
from candle.testing import free_port
from tests.test_cli import run_cli

JINA = load_catalog("demo-all").get("jina-embeddings-v2-base-en")
JINA_CODE = TINY_MODELS["jina_bert_code"]
LOOKALIKES = ["stella", "gte_qwen2", "nv_embed", "jina_v2", "jina_bert_code"]

# Loads the Jina look-alike from a snapshot folder as a replica's engine does; prints its width.
LOAD_OFFLINE = """
import sys
from pathlib import Path
from candle.catalog import load_catalog
from candle.engines.embedding.sentence_transformers import SentenceEmbeddingEngine
engine = SentenceEmbeddingEngine(Path(sys.argv[1]), load_catalog("demo-all").get("jina-embeddings-v2-base-en"))
print(engine.embed_items(["a cat sits on the mat"])[0].shape[1])
"""


@pytest.fixture(scope="module")
def store(hub_store: Path) -> dict[str, Path]:
    return build_tiny_store(hub_store, LOOKALIKES)


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data))


def test_code_repos_are_the_repo_parts_of_auto_map_references_once_each(tmp_path: Path):
    _write_json(
        tmp_path / "config.json",
        {
            "auto_map": {
                "AutoConfig": "org/code--configuration_x.XConfig",
                "AutoModel": "org/code--modeling_x.XModel",
                "AutoModelForMaskedLM": "modeling_local.Local",  # the model's own snapshot: nothing more to fetch
            }
        },
    )
    _write_json(tmp_path / "tokenizer_config.json", {"auto_map": {"AutoTokenizer": ["other/tok--tok.Slow", None]}})
    assert code_repos(tmp_path) == ("org/code", "other/tok")
    assert code_repos(tmp_path / "no-such-folder") == ()


def test_a_reference_that_is_no_repo_id_is_refused(tmp_path: Path):
    _write_json(tmp_path / "config.json", {"auto_map": {"AutoModel": "../../etc--modeling.Evil"}})
    with pytest.raises(HFValidationError):
        code_repos(tmp_path)


def test_the_lookalikes_reference_code_as_the_real_repos_do(store: dict[str, Path]):
    assert code_repos(store["jina_v2"]) == (JINA_CODE,)  # a second repo
    assert code_repos(store["gte_qwen2"]) == (TINY_MODELS["gte_qwen2"],)  # its own repo, on the hub
    assert code_repos(store["stella"]) == code_repos(store["nv_embed"]) == ()  # files of the snapshot


def _load_offline(snapshot: Path, cache: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """A fresh process with no network: offline, a hub address nobody answers, an empty module cache."""
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(cache),
        "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "HF_MODULES_CACHE": str(tmp_path / f"modules-{cache.name}"),
    }
    return subprocess.run(
        [sys.executable, "-c", LOAD_OFFLINE, str(snapshot)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_prefetch_with_remote_code_then_load_offline(
    ray_cluster, hub: LocalHub, store: dict[str, Path], tmp_path: Path
):
    repo = TINY_MODELS["jina_v2"]
    with_code, without_code = tmp_path / "with-code", tmp_path / "without-code"
    done = run_cli(["prefetch", repo, "--trust-remote-code", "--cache-dir", str(with_code)], ray_cluster)
    assert done.returncode == 0, done.stderr
    assert hub.stats.bodies_for(JINA_CODE) == {"configuration_bert.py": 1, "modeling_bert.py": 1}
    plain = run_cli(["prefetch", repo, "--cache-dir", str(without_code)], ray_cluster)
    assert plain.returncode == 0, plain.stderr
    assert hub.stats.bodies_for(JINA_CODE) == {"configuration_bert.py": 1, "modeling_bert.py": 1}  # not again

    loaded = _load_offline(Path(done.stdout.strip().splitlines()[-1]), with_code, tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.strip().splitlines()[-1] == "64"
    # Without the code repo in the cache, the same offline load cannot find JinaBertConfig's file.
    missing = _load_offline(Path(plain.stdout.strip().splitlines()[-1]), without_code, tmp_path)
    assert missing.returncode != 0
    assert "offline mode" in missing.stderr.strip().splitlines()[-1], missing.stderr[-2000:]


def test_the_prefetch_job_warms_the_code_repos_of_a_trust_remote_code_entry(
    ray_cluster, hub: LocalHub, store: dict[str, Path], tmp_path: Path
):
    (target,) = prefetch.plan([JINA.name], load_catalog("demo-all"), ray.nodes())
    assert target.remote_code
    target = replace(target, request=replace(target.request, cache_dir=str(tmp_path)))
    assert asyncio.run(prefetch.run([target], progress_interval_s=0.5)) == []
    code = next((tmp_path / f"models--{JINA_CODE.replace('/', '--')}" / "snapshots").iterdir())
    assert sorted(p.name for p in code.iterdir()) == ["configuration_bert.py", "modeling_bert.py"]
    assert hub.stats.bodies_for(JINA_CODE) == {"configuration_bert.py": 1, "modeling_bert.py": 1}


@pytest.mark.parametrize(
    ("lookalike", "model_class"),
    [
        ("jina_v2", modeling_bert.JinaBertModel),
        ("gte_qwen2", modeling_qwen.Qwen2Model),
        ("nv_embed", modeling_nvembed.NVEmbedModel),
    ],
)
def test_a_lookalike_loads_with_every_tensor_its_saved_model_had(
    store: dict[str, Path], lookalike: str, model_class: type[PreTrainedModel]
):
    """``from_pretrained`` builds the model on the meta device and fills in what the checkpoint holds:
    a tensor the checkpoint does not hold (a ``persistent=False`` buffer) must come out as the built
    model had it, not as whatever memory it was given, or the model computes something else per load."""
    folder = store[lookalike]
    loaded = model_class.from_pretrained(folder).eval()
    built = model_class(loaded.config).eval()  # built on the CPU, as the look-alike was before it was saved
    built.load_state_dict(load_file(folder / "model.safetensors"))
    loaded_buffers = dict(loaded.named_buffers())
    assert set(loaded_buffers) == {name for name, _ in built.named_buffers()}
    for name, buffer in built.named_buffers():
        torch.testing.assert_close(loaded_buffers[name], buffer, msg=name)
    tokens = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        outputs = [model(input_ids=tokens, attention_mask=torch.ones_like(tokens)) for model in (loaded, built)]
    torch.testing.assert_close(outputs[0].last_hidden_state, outputs[1].last_hidden_state)


# Loads the Jina look-alike as a replica does (the snapshot and code commits it fetched: argv), with the
# hub reachable; prints what code ran.
LOAD_AS_A_REPLICA = """
import json, sys
from pathlib import Path
from candle.catalog import load_catalog
from candle.download.remote_code import FetchedModel
from deployments.replicas.base import load_fetched
fetched = FetchedModel(Path(sys.argv[1]), {repo: Path(p) for repo, p in json.loads(sys.argv[2]).items()})
engine = load_fetched(load_catalog("demo-all").get("jina-embeddings-v2-base-en"), fetched)
remote = [type(m).__module__ for m in engine.model.modules() if "transformers_modules" in type(m).__module__]
modules = {sys.modules[name] for name in remote}
print(json.dumps({
    "width": int(engine.embed_items(["a cat sits on the mat"])[0].shape[1]),
    "files": sorted(m.__file__ for m in modules),
    "newer": any(hasattr(m, "NEWER_THAN_FETCHED") for m in modules),
}))
"""


def _fetch(cache: Path, code_revisions: dict[str, str] | None = None) -> FetchedModel:
    request = make_request(TINY_MODELS["jina_v2"], cache_dir=cache)
    return asyncio.run(fetch_model(request, True, code_revisions=code_revisions))


def _load_as_a_replica(fetched: FetchedModel, cache: Path, hub: LocalHub, tmp_path: Path) -> dict:
    """Load in a fresh process that could reach the hub; what ran, and that the hub was asked nothing."""
    before = (dict(hub.stats.heads), dict(hub.stats.bodies), dict(hub.stats.api_calls))
    env = {"HF_HUB_CACHE": str(cache), "HF_ENDPOINT": hub.endpoint, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            LOAD_AS_A_REPLICA,
            str(fetched.folder),
            json.dumps({r: str(p) for r, p in fetched.code.items()}),
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert (dict(hub.stats.heads), dict(hub.stats.bodies), dict(hub.stats.api_calls)) == before, "it asked the hub"
    ran = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert ran["width"] == 64 and ran["files"], ran
    return ran


@contextmanager
def main_moved(hub: LocalHub, store: dict[str, Path]) -> Iterator[str]:
    """The code repo's ``main`` moved to newer code (marked ``NEWER_THAN_FETCHED``) while the block runs."""
    original = {p.name: p.read_bytes() for p in store["jina_bert_code"].iterdir() if p.is_file()}
    newer = {**original, "modeling_bert.py": original["modeling_bert.py"] + b"\nNEWER_THAN_FETCHED = True\n"}
    try:
        yield hub.state.publish(JINA_CODE, newer)
    finally:
        hub.state.publish(JINA_CODE, original)


def test_the_code_a_replica_loads_is_the_commit_fetched_even_after_main_moves(
    ray_cluster, hub: LocalHub, store: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """transformers resolves a code repo's branch again when it loads: the load must run the commit the
    download service fetched and verified, from the cache, and ask the hub nothing."""
    fetched = _fetch(tmp_path / "node-a")
    assert f"the code of {JINA_CODE} runs at its default branch" in caplog.text  # no commit in the catalog
    (commit,) = (snapshot.name for snapshot in fetched.code.values())
    with main_moved(hub, store) as moved:
        assert moved != commit
        ran = _load_as_a_replica(fetched, tmp_path / "node-a", hub, tmp_path)
        assert not ran["newer"], f"newer code than the fetched commit ran: {ran['files']}"
        assert all(f"/{commit}/" in path for path in ran["files"]), ran["files"]
        # Another node of this cluster fetching now gets the commit the cluster recorded, not the new main.
        assert _fetch(tmp_path / "node-b").code[JINA_CODE].name == commit


def test_a_code_commit_named_in_the_catalog_is_the_one_fetched_and_run(
    ray_cluster, hub: LocalHub, store: dict[str, Path], tmp_path: Path
):
    with main_moved(hub, store) as moved:
        pass  # main moved on and back: the moved-to commit stays served by its hash
    fetched = _fetch(tmp_path / "cache", {JINA_CODE: moved})
    assert fetched.code[JINA_CODE].name == moved
    ran = _load_as_a_replica(fetched, tmp_path / "cache", hub, tmp_path)
    assert ran["newer"] and all(f"/{moved}/" in path for path in ran["files"]), ran["files"]


def test_a_replica_imports_no_huggingface_hub_internals():
    """A model's runtime_env may bring an older huggingface_hub (NV-Embed-v2's): what a replica imports
    to fetch and load must not reach its private modules, or the replica fails at import."""
    imported = subprocess.run(
        [sys.executable, "-c", "import sys, deployments.replicas.base; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "candle.download.node.hf_internals" not in imported.stdout.split("'")
