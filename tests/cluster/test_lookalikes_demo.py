"""``candle demo --all-models``: a look-alike of each of the fourteen production models, under production's
names, comes up on a 2-core machine and answers one request per capability.

Here, in the cluster phase, because it takes minutes (twelve replicas starting on two cores took 144 s
and 230 s to all-ready in two runs, store build included, measured with ``pytest -s``); it starts its
own local Ray, as the demo does, and needs none of the simulated cluster.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import time
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from candle.catalog import load_catalog
from tests.test_api import CHAT, assert_the_image_is_read, data_url
from tests.test_demo import running_demo

READY_TIMEOUT_S = 900
# Past the session's 300 s: fourteen replicas starting on a busy 2-core machine, then one request each.
pytestmark = pytest.mark.timeout(READY_TIMEOUT_S + 300)
WIDTHS = {  # the look-alikes' default widths (Stella's: its 2_Dense_32 head)
    "stella-en-1.5b-v5": 32,
    "gte-qwen2-1.5b-instruct": 64,
    "all-minilm-l6-v2": 384,
    "jina-embeddings-v2-base-en": 64,
    "nv-embed-v2": 64,
}


def test_all_models_demo_serves_the_fourteen_production_models(hub_store: Path, tmp_path: Path):
    production = load_catalog("production")
    with running_demo(hub_store, tmp_path, "--all-models") as demo:
        started = time.monotonic()
        cards = demo.wait_ready([m.name for m in production.models], READY_TIMEOUT_S)
        print(f"candle demo --all-models: fourteen ready {time.monotonic() - started:.0f} s after the start")
        assert {name: card["capability"] for name, card in cards.items()} == {
            m.name: m.capability for m in production.models
        }
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{demo.port}/v1", api_key="unused", timeout=120)
        for model in ("kimi-k2", "phi-4-reasoning", "qwen3-coder"):
            chat = client.chat.completions.create(model=model, messages=CHAT, max_tokens=4)
            assert chat.usage.completion_tokens > 0
        for model, width in WIDTHS.items():
            vectors = client.embeddings.create(model=model, input=["a cat sits on the mat"]).data
            assert len(vectors[0].embedding) == width, model
        red = data_url(Image.new("RGB", (32, 32), "red"))
        assert len(client.embeddings.create(model="clip-vit-large-patch14", input=[red]).data[0].embedding) > 0
        for model in ("sd3.5-large-turbo", "flux.1-schnell"):
            generated = client.images.generate(model=model, prompt="a lighthouse", size="64x64")
            assert Image.open(io.BytesIO(base64.b64decode(generated.data[0].b64_json))).size == (64, 64)
        assert_the_image_is_read(client, "llava-1.5-7b", hub_store)
        for model in ("bge-reranker-v2-m3", "jina-reranker-v2-base-multilingual"):
            body = {"model": model, "query": "a cat", "documents": ["a cat sits on the mat", "a tax report"]}
            ranked = httpx.post(f"http://127.0.0.1:{demo.port}/v1/rerank", json=body, timeout=120)
            assert sorted(r["index"] for r in ranked.json()["results"]) == [0, 1], ranked.text

        os.killpg(demo.process.pid, signal.SIGINT)
        assert demo.process.wait(timeout=90) == 0
