"""The look-alikes of the four remote-code embedders, through the gateway with their production fields.

Deployed from the ``demo-all`` catalog (production's prompts, engine_args and patterns; a test keeps
them in step) on the session's Serve; the vectors are compared with sentence-transformers run here,
in-process, on the same repos.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
from sentence_transformers import SentenceTransformer

from candle.catalog import load_catalog
from candle.demo.hub import LocalHub
from candle.demo.tiny_models import TINY_MODELS, build_tiny_store
from candle.download.cluster.status import cluster_progress
from candle.testing import catalog_apps, wait_for_models
from tests.replica_threads import replica_threads

DEMO_ALL = load_catalog("demo-all")
STELLA, GTE, NV_EMBED, JINA = (
    "stella-en-1.5b-v5",
    "gte-qwen2-1.5b-instruct",
    "nv-embed-v2",
    "jina-embeddings-v2-base-en",
)
CATALOG = {"models": [DEMO_ALL.get(name).model_dump(mode="json") for name in (STELLA, GTE, NV_EMBED, JINA)]}
JINA_CODE = TINY_MODELS["jina_bert_code"]
TEXT = "a cat sits on the mat"


@pytest.fixture(scope="module")
def served(serve_base: str, hub_server: LocalHub, hub_store: Path) -> Iterator[tuple[openai.OpenAI, dict]]:
    """A client of the gateway once the four are ready, and what the hub served while they loaded."""
    build_tiny_store(hub_store, ["stella", "gte_qwen2", "nv_embed", "jina_v2", "jina_bert_code"])
    hub_server.reset()
    with catalog_apps(CATALOG, "gateway-lookalikes", "/lookalikes"):
        base = f"{serve_base}/lookalikes"
        wait_for_models(base, {m["name"]: "ready" for m in CATALOG["models"]}, 600)
        served = {repo: hub_server.stats.bodies_for(repo) for repo in TINY_MODELS.values()}
        yield openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120), served


def embed(client: openai.OpenAI, model: str, **options) -> np.ndarray:
    data = client.embeddings.create(model=model, input=[TEXT], **options).data
    return np.array(data[0].embedding, dtype=np.float32)


def in_process(hub_store: Path, name: str, text: str, cache: str) -> np.ndarray:
    """sentence-transformers on the look-alike repo, as its model card says to call it; the code repos
    its auto_map names come from the cache the replicas' downloader filled, with no hub access."""
    spec = DEMO_ALL.get(name)
    model = SentenceTransformer(
        str(hub_store / spec.repo_id),
        trust_remote_code=True,
        cache_folder=cache,
        local_files_only=True,
        config_kwargs=spec.engine_args.get("config_kwargs"),
    )
    with replica_threads():
        return model.encode([text], normalize_embeddings=True)[0]


def test_stella_serves_dimensions_from_its_heads(served):
    client, _ = served
    assert len(embed(client, STELLA)) == 32  # modules.json's head, 2_Dense_32
    for dimensions in (8, 128, 256):  # 128 and 256 are wider than the default head: only a head gives them
        vector = embed(client, STELLA, dimensions=dimensions)
        assert len(vector) == dimensions
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        embed(client, STELLA, dimensions=512)


@pytest.mark.parametrize("name", [GTE, NV_EMBED])
def test_the_query_prompt_is_applied(served, ray_cluster: dict[str, str], hub_store: Path, name: str):
    """NV-Embed also gets its EOS appended, after the text, as its model card does."""
    client, _ = served
    spec = DEMO_ALL.get(name)
    eos = "</s>" if spec.engine_args.get("append_eos") else ""
    query = embed(client, name, extra_body={"input_type": "query"})
    plain = embed(client, name)
    assert not np.allclose(query, plain, atol=1e-3)
    cache = ray_cluster["HF_HUB_CACHE"]
    np.testing.assert_allclose(query, in_process(hub_store, name, spec.prompts["query"] + TEXT + eos, cache), atol=1e-5)
    np.testing.assert_allclose(plain, in_process(hub_store, name, TEXT + eos, cache), atol=1e-5)


def test_jinas_code_repo_is_fetched_once_by_the_download_service(served, ray_cluster: dict[str, str], hub_store: Path):
    client, bodies = served
    assert bodies[JINA_CODE] == {"configuration_bert.py": 1, "modeling_bert.py": 1}
    records = [r for node in asyncio.run(cluster_progress(JINA_CODE)).values() for r in node]
    assert [r.state for r in records] == ["done"]  # the node's downloader fetched it, not transformers
    expected = in_process(hub_store, JINA, TEXT, ray_cluster["HF_HUB_CACHE"])
    np.testing.assert_allclose(embed(client, JINA), expected, atol=1e-5)


def test_gte_qwen2s_code_comes_from_its_own_repo_once(served):
    """Its auto_map names its own repo on the hub: the code file is fetched with the weights, once."""
    _, bodies = served
    assert bodies[TINY_MODELS["gte_qwen2"]]["modeling_qwen.py"] == 1
    assert set(bodies[TINY_MODELS["stella"]]) >= {"2_Dense_32/model.safetensors", "modeling_qwen.py"}
    assert not any(path.endswith(".bin") for path in bodies[TINY_MODELS["stella"]])  # one format of the heads
