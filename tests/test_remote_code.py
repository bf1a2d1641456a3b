"""Remote code through the download service: the repos a config's ``auto_map`` names are fetched with
the model (verified, cached, once), so a node loads it with ``HF_HUB_OFFLINE=1`` after a prefetch."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
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
from candle.download.remote_code import code_repos
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
from candle.engines.embeddings import SentenceEmbeddingEngine
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
