"""Candle's engines on a CUDA GPU, in-process, from the tiny models; skipped where no GPU is visible.

CI has no GPU: run ``python -m pytest -q tests/test_gpu_engines.py`` on a GPU node. These check what
only a GPU shows: each engine puts its weights on the GPU in bf16, inputs follow them there (fp32
pixels into a bf16 vision tower is the classic failure), outputs agree with the fp32 CPU reference
within bf16's precision, and diffusers' ``balanced`` device map loads and generates.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from sentence_transformers import CrossEncoder, SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Dense
from transformers import AutoProcessor, AutoTokenizer, CLIPModel, CLIPProcessor

import candle.engines.image_generation.diffusers
from candle.catalog import load_catalog
from candle.contracts import ChatCall, GenerationParams, ImageCall
from candle.engines import load_engine
from candle.engines.chat.transformers import TransformersTextEngine
from candle.engines.embedding.sentence_transformers import SentenceEmbeddingEngine
from candle.engines.image_embedding.clip import ClipEngine
from candle.engines.image_generation.diffusers import DiffusionEngine
from candle.engines.rerank.sentence_transformers import CrossEncoderEngine
from candle.engines.vision.transformers import LlavaEngine
from tests.test_engines import CHAT, GREEDY, TEXTS, normalize, run, save_decoder_embedder, spec_for, tiny_folder

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

HEAD_DIM = 32  # the tiny Qwen3 is 64 wide; a head of its own width would never be used
IMAGE_CHAT = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gpu-engine-store")


def on_gpu_in(module: torch.nn.Module, dtype: torch.dtype) -> None:
    parameters = list(module.parameters())
    assert parameters and all(p.device.type == "cuda" for p in parameters)
    assert {p.dtype for p in parameters} == {dtype}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (normalize(torch.from_numpy(a)) * normalize(torch.from_numpy(b))).sum(axis=1)


def png(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Text and vision chat


def test_auto_text_engine_on_a_gpu_asks_for_vllm(store: Path):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed: tests/test_vllm_engine.py runs it")
    with pytest.raises(ModuleNotFoundError, match=r"engine vllm needs vLLM.*install candle\[gpu\]"):
        load_engine(spec_for("qwen3", "text-to-text"), tiny_folder(store, "qwen3"))


def test_transformers_text_engine_streams_in_bf16_on_the_gpu(store: Path):
    folder = tiny_folder(store, "qwen3")
    engine = load_engine(spec_for("qwen3", "text-to-text", engine="transformers"), folder)
    assert isinstance(engine, TransformersTextEngine)
    on_gpu_in(engine.model, torch.bfloat16)

    text, last = run(engine.chat(ChatCall(CHAT, GREEDY)))
    template = AutoTokenizer.from_pretrained(folder).apply_chat_template(CHAT, add_generation_prompt=True)
    assert last.prompt_tokens == len(template["input_ids"])
    assert last.finish_reason in ("stop", "length") and 0 < last.completion_tokens <= GREEDY.max_tokens
    assert run(engine.chat(ChatCall(CHAT, GREEDY))) == (text, last)

    def sample(seed: int) -> str:
        return run(engine.chat(ChatCall(CHAT, GenerationParams(max_tokens=8, temperature=1.0, seed=seed))))[0]

    assert sample(1) == sample(1)  # the seed reaches the CUDA sampler too
    assert sample(1) != sample(2)


def test_llava_answers_about_an_image_on_the_gpu(store: Path):
    folder = tiny_folder(store, "llava")
    engine = load_engine(spec_for("llava", "vision", engine="transformers"), folder)
    assert isinstance(engine, LlavaEngine)
    on_gpu_in(engine.model, torch.bfloat16)
    image = Image.open(io.BytesIO(png((10, 120, 200))))

    text, last = run(engine.chat(ChatCall(IMAGE_CHAT, GREEDY, images=(image,))))

    processor = AutoProcessor.from_pretrained(folder)
    prompt = processor.apply_chat_template(IMAGE_CHAT, add_generation_prompt=True)
    assert last.prompt_tokens == processor(images=[image], text=prompt, return_tensors="pt")["input_ids"].shape[1]
    assert last.completion_tokens > 0 and text


# ---------------------------------------------------------------------------------------------
# Embeddings in bf16: CLIP, and sentence-transformers with a Matryoshka head


def test_clip_on_the_gpu_agrees_with_the_cpu_in_fp32(store: Path):
    folder = tiny_folder(store, "clip")
    engine = load_engine(spec_for("clip", "image-embedding"), folder)
    assert isinstance(engine, ClipEngine)
    on_gpu_in(engine.model, torch.bfloat16)
    items: list[str | bytes] = [png((200, 30, 30)), "a red square", png((20, 200, 30)), "a photo of a dog"]

    vectors, tokens = engine.embed_items(items)

    model, processor = CLIPModel.from_pretrained(folder), CLIPProcessor.from_pretrained(folder)
    images = [Image.open(io.BytesIO(item)).convert("RGB") for item in items if isinstance(item, bytes)]
    with torch.inference_mode():
        image_features = model.get_image_features(**processor(images=images, return_tensors="pt")).pooler_output
        texts = processor(text=[item for item in items if isinstance(item, str)], padding=True, return_tensors="pt")
        text_features = model.get_text_features(**texts).pooler_output
    expected = normalize(torch.stack([image_features[0], text_features[0], image_features[1], text_features[1]]))
    assert vectors.shape == expected.shape
    assert cosines(vectors, expected).min() > 0.99, cosines(vectors, expected)
    assert tokens[0] == tokens[2] == 0 and tokens[1] > 0 and tokens[3] > 0


@pytest.fixture(scope="module")
def decoder_embedder_folder(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen3 as a Stella-like embedder, with a Matryoshka head in ``2_Dense_32``."""
    folder = save_decoder_embedder(tiny_folder(store, "qwen3"), tmp_path_factory.mktemp("decoder-embedder") / "model")
    width = SentenceTransformer(str(folder), device="cpu").get_embedding_dimension()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        head = Dense(width, HEAD_DIM, activation_function=torch.nn.Identity())
    (folder / f"2_Dense_{HEAD_DIM}").mkdir()
    head.save(str(folder / f"2_Dense_{HEAD_DIM}"))
    return folder


def test_sentence_embeddings_and_their_head_on_the_gpu_agree_with_the_cpu(decoder_embedder_folder: Path):
    engine = load_engine(spec_for("embedder", "text-embedding"), decoder_embedder_folder)
    assert isinstance(engine, SentenceEmbeddingEngine)
    on_gpu_in(engine.model, torch.bfloat16)

    reference = SentenceTransformer(str(decoder_embedder_folder), device="cpu")
    expected_full = reference.encode(TEXTS, normalize_embeddings=True)
    head = Dense.load(str(decoder_embedder_folder / f"2_Dense_{HEAD_DIM}"))
    with torch.inference_mode():
        pooled = {"sentence_embedding": reference.encode(TEXTS, convert_to_tensor=True)}
        expected_head = normalize(head(pooled)["sentence_embedding"])

    full, headed = engine.embed(TEXTS), engine.embed(TEXTS, dimensions=HEAD_DIM)
    assert full.shape == expected_full.shape and headed.shape == (len(TEXTS), HEAD_DIM)
    assert cosines(full, expected_full).min() > 0.99
    assert cosines(headed, expected_head).min() > 0.99


def test_a_reranker_in_its_entrys_fp16_on_the_gpu_agrees_with_the_cpu(store: Path):
    """bge-reranker-v2-m3 runs in fp16 in production (its entry's ``model_kwargs``, not candle's bf16):
    the weights are there in fp16 and the scores within half precision of the fp32 CPU reference."""
    entry = load_catalog("production").get("bge-reranker-v2-m3")
    folder = tiny_folder(store, "bge_reranker")
    engine = load_engine(spec_for("bge_reranker", "rerank", engine_args=entry.engine_args), folder)
    assert isinstance(engine, CrossEncoderEngine)
    on_gpu_in(engine.model, torch.float16)
    pairs = [("where does the cat sit?", text) for text in TEXTS]
    scores, tokens = engine.score_pairs(pairs)
    np.testing.assert_allclose(scores, CrossEncoder(str(folder), device="cpu").predict(pairs), atol=1e-2)
    assert scores.dtype == np.float32 and len(tokens) == len(pairs)


# ---------------------------------------------------------------------------------------------
# Images: one GPU takes the whole pipeline; several share it through diffusers' balanced map


def check_generates(engine: DiffusionEngine) -> None:
    def generate(seed: int) -> list[bytes]:
        return engine.generate(ImageCall("a red apple on a table", n=2, width=64, height=48, seed=seed))

    images = generate(1)
    assert [Image.open(io.BytesIO(image)).size for image in images] == [(64, 48), (64, 48)]
    assert generate(1) == images
    assert generate(2) != images


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_diffusion_pipeline_moves_whole_onto_one_gpu(store: Path, name: str):
    engine = load_engine(spec_for(name, "text-to-image"), tiny_folder(store, name))
    assert isinstance(engine, DiffusionEngine)
    for component in engine.pipeline.components.values():
        if isinstance(component, torch.nn.Module):
            on_gpu_in(component, torch.bfloat16)
    check_generates(engine)


def test_balanced_device_map_places_every_component_on_a_gpu(store: Path, monkeypatch: pytest.MonkeyPatch):
    """The replica of a multi-GPU entry. On a one-GPU machine the engine is told there are two, so it
    takes that path (``device_map="balanced"``, no ``.to``) and diffusers puts everything on GPU 0."""
    gpus = torch.cuda.device_count()
    monkeypatch.setattr(candle.engines.image_generation.diffusers, "gpu_count", lambda: max(2, gpus))
    engine = load_engine(spec_for("sd3", "text-to-image"), tiny_folder(store, "sd3"))
    assert isinstance(engine, DiffusionEngine)
    placed: dict[str, Any] = engine.pipeline.hf_device_map
    assert placed and set(placed) <= set(engine.pipeline.components)
    devices = {torch.device(f"cuda:{d}" if isinstance(d, int) else d) for d in placed.values()}
    assert {d.type for d in devices} == {"cuda"}, placed  # nothing offloaded to the CPU
    check_generates(engine)
