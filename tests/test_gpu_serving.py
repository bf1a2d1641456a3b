"""The demo catalog through Ray Serve on a GPU node; skipped where no CUDA GPU is visible.

CI has no GPU: run ``python -m pytest -q tests/test_gpu_serving.py`` on a GPU node (its local Ray
cluster detects the node's GPUs). tests/test_gpu_engines.py checks each engine in-process; this
checks what only Serve on a real GPU shows: Ray books each entry's GPU share, every replica that
asks for a share has its weights on the GPU (its process holds GPU memory), a replica that asks for
none stays off the GPU although the node has one, and each capability answers through the gateway.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import ray
import torch
from PIL import Image

from candle.catalog import load_catalog
from candle.demo.hub import LocalHub
from candle.demo.tiny_models import build_tiny_store
from candle.testing import catalog_apps, replica_processes, wait_for_models
from tests.test_api import CHAT, assert_the_image_is_read, cos, data_url

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GPU_SHARE = 0.15  # five models on one GPU, with room to spare
OFF_GPU = "all-minilm-l6-v2-gpu"  # the one entry that asks for no GPU


def gpu_catalog() -> dict[str, Any]:
    """The demo catalog, each name suffixed '-gpu' (apart from test_api's apps), every model but
    MiniLM asking for a share of a GPU; text and vision name the transformers engine, since ``auto``
    picks vLLM on GPU nodes."""
    entries = []
    for spec in load_catalog("demo").models:
        update: dict[str, Any] = {"name": f"{spec.name}-gpu"}
        if update["name"] != OFF_GPU:
            update["resources"] = spec.resources.model_copy(update={"num_gpus": GPU_SHARE})
            if spec.capability in ("text-to-text", "vision"):
                update["engine"] = "transformers"
        entries.append(spec.model_copy(update=update).model_dump())
    return {"models": entries}


CATALOG = gpu_catalog()
NAMES = [entry["name"] for entry in CATALOG["models"]]


@pytest.fixture(scope="module")
def gpu_api(serve_base: str, hub_server: LocalHub, hub_store: Path) -> Iterator[str]:
    build_tiny_store(hub_store)
    base = f"{serve_base}/gpu"
    with catalog_apps(CATALOG, "gateway-gpu", "/gpu"):
        wait_for_models(base, {name: "ready" for name in NAMES})
        yield base


@pytest.fixture(scope="module")
def client(gpu_api: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gpu_api}/v1", api_key="unused", max_retries=0, timeout=120)


def gpu_pids() -> set[int]:
    """Processes holding memory on any GPU of this node, as the driver sees them."""
    pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py lists the processes on a GPU")
    pynvml.nvmlInit()
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        return {p.pid for handle in handles for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)}
    finally:
        pynvml.nvmlShutdown()


def test_ray_books_each_entrys_gpu_share(gpu_api: str):
    total = ray.cluster_resources().get("GPU", 0)
    assert total == torch.cuda.device_count()  # Ray found the node's GPUs by itself
    booked = GPU_SHARE * (len(NAMES) - 1)
    deadline = time.monotonic() + 30  # the resource view catches up with the scheduler within seconds
    while abs(ray.available_resources().get("GPU", 0) - (total - booked)) > 1e-6 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("GPU", 0) == pytest.approx(total - booked)


def test_replicas_with_a_gpu_share_hold_gpu_memory_and_the_others_none(gpu_api: str):
    on_gpu = gpu_pids()
    replicas = {name: {p.pid for p in replica_processes(name)} for name in NAMES}
    assert all(len(pids) == 1 for pids in replicas.values()), replicas
    assert {name for name, pids in replicas.items() if pids & on_gpu} == set(NAMES) - {OFF_GPU}


def test_chat_streams_from_the_gpu(client: openai.OpenAI):
    model = "qwen3-coder-tiny-gpu"
    whole = client.chat.completions.create(model=model, messages=CHAT, max_tokens=12, temperature=0)
    stream = client.chat.completions.create(model=model, messages=CHAT, max_tokens=12, temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text and text == whole.choices[0].message.content  # greedy on the GPU: both ways agree


def test_images_from_the_gpu_are_pngs_that_the_seed_fixes(client: openai.OpenAI):
    def generate(seed: int) -> list[str]:
        result = client.images.generate(
            model="sd3.5-turbo-tiny-gpu", prompt="a lighthouse", n=2, size="64x32", extra_body={"seed": seed}
        )
        return [d.b64_json for d in result.data]

    first = generate(3)
    images = [Image.open(io.BytesIO(base64.b64decode(b64))) for b64 in first]
    assert [(i.format, i.size) for i in images] == [("PNG", (64, 32))] * 2
    assert generate(3) == first and generate(4) != first


def test_clip_and_minilm_embed_side_by_side(client: openai.OpenAI):
    red, blue = Image.new("RGB", (40, 30), "red"), Image.new("RGB", (64, 64), "blue")
    clip = client.embeddings.create(model="clip-vit-tiny-gpu", input=[data_url(red), data_url(blue), "a red square"])
    assert len(clip.data) == 3 and clip.data[0].embedding != clip.data[1].embedding
    texts = ["a cat sits on the mat", "a kitten rests on a rug", "quarterly tax report spreadsheet"]
    cat, kitten, tax = (d.embedding for d in client.embeddings.create(model=OFF_GPU, input=texts).data)
    assert cos(cat, kitten) > cos(cat, tax) + 0.2


def test_vision_answers_from_the_gpu(client: openai.OpenAI, hub_store: Path):
    assert_the_image_is_read(client, "llava-tiny-gpu", hub_store)


def test_rerank_from_the_gpu(gpu_api: str):
    documents = ["a cat sits on the mat", "quarterly tax report spreadsheet", "a kitten rests on a rug"]
    body = {"model": "bge-reranker-tiny-gpu", "query": "where does the cat sit?", "documents": documents}
    answer = httpx.post(f"{gpu_api}/v1/rerank", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert sorted(r["index"] for r in results) == [0, 1, 2]
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True) and all(0 < score < 1 for score in scores)
