"""Candle's engines loaded in-process (no Ray, no Serve) from tiny model folders.

The end-to-end API tests drive qwen3, MiniLM and the image models through the gateway; these tests
cover what they cannot reach cheaply: the other chat architectures, cancellation of a stream,
FLUX under its production defaults, Matryoshka heads, and vLLM staying an optional import.
"""

from __future__ import annotations

import importlib
import io
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

from candle.catalog import ModelSpec, load_catalog
from candle.contracts import ChatCall, CompletionCall, GenerationParams, ImageCall, TextChunk
from candle.demo.tiny_models import TINY_MODELS, build_tiny_store
from candle.engines import engine_kind, load_engine
from candle.engines.chat.transformers import TransformersTextEngine
from candle.engines.device import gpu_count
from candle.engines.embedding.sentence_transformers import SentenceEmbeddingEngine
from candle.engines.errors import InvalidInput
from candle.engines.image_generation.diffusers import DiffusionEngine

# On a GPU machine load_engine picks vLLM for text and loads models in bf16 on CUDA, so these exact
# checks of the CPU paths skip there; tests/test_gpu_engines.py covers the GPU paths.
cpu_only = pytest.mark.skipif(gpu_count() > 0, reason="checks the CPU engines; tests/test_gpu_engines.py covers GPUs")

CHAT = [{"role": "user", "content": "Hello! How can I help you today?"}]
GREEDY = GenerationParams(max_tokens=8, temperature=0)
TEXTS = ["A cat sits on the mat.", "The quick brown fox jumps over the lazy dog while the farmer watches."]
HEAD_DIM = 64


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engine-store")


def tiny_folder(store: Path, name: str) -> Path:
    """Build only the tiny repos this module uses, once each (later calls reuse the build)."""
    return build_tiny_store(store, [name])[name]


def spec_for(name: str, capability: str, **fields: Any) -> ModelSpec:
    """A catalog entry as a user would write it; only the fields under test differ from the defaults."""
    return ModelSpec(name=name, capability=capability, repo_id=TINY_MODELS.get(name, f"candle-tiny/{name}"), **fields)


def run(stream: Iterator[TextChunk]) -> tuple[str, TextChunk]:
    """Drain a stream: the whole text and the final chunk (finish reason and token counts)."""
    chunks = list(stream)
    assert chunks, "a stream always ends with a final chunk"
    assert all(c.finish_reason is None for c in chunks[:-1])
    return "".join(c.text for c in chunks), chunks[-1]


def normalize(vectors: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(vectors, dim=-1).float().numpy()


def save_decoder_embedder(lm_folder: Path, folder: Path, dtype: torch.dtype = torch.float32) -> Path:
    """A Stella-like sentence-transformers model: a causal LM's body with mean pooling, saved in ``dtype``."""
    body = Transformer(str(lm_folder))
    model = SentenceTransformer(modules=[body, Pooling(body.get_embedding_dimension(), "mean")], device="cpu")
    model.to(dtype).save(str(folder))
    return folder


# ---------------------------------------------------------------------------------------------
# Text: the chat architectures the API tests leave out


@pytest.fixture(scope="module", params=["phi3", "deepseek_v3"])
def text_engine(request: pytest.FixtureRequest, store: Path) -> TransformersTextEngine:
    name = request.param
    engine = load_engine(spec_for(name, "text-to-text"), tiny_folder(store, name))
    assert isinstance(engine, TransformersTextEngine)
    return engine


@cpu_only
def test_chat_streams_chunks_with_usage_and_greedy_is_deterministic(text_engine: TransformersTextEngine):
    text, last = run(text_engine.chat(ChatCall(CHAT, GREEDY)))
    assert last.finish_reason in ("stop", "length")
    assert last.prompt_tokens > 0
    assert 0 < last.completion_tokens <= GREEDY.max_tokens
    assert run(text_engine.chat(ChatCall(CHAT, GREEDY))) == (text, last)


@cpu_only
def test_complete_reads_a_raw_prompt(text_engine: TransformersTextEngine):
    _, last = run(text_engine.complete(CompletionCall("The quick brown fox", GREEDY)))
    assert last.finish_reason in ("stop", "length")
    # The raw prompt is shorter than the same words wrapped in the chat template.
    assert 0 < last.prompt_tokens < run(text_engine.chat(ChatCall(CHAT, GREEDY)))[1].prompt_tokens
    assert 0 < last.completion_tokens <= GREEDY.max_tokens


@cpu_only
def test_seed_makes_sampling_reproducible(text_engine: TransformersTextEngine):
    def sample(seed: int) -> str:
        return run(text_engine.chat(ChatCall(CHAT, GenerationParams(max_tokens=8, temperature=1.0, seed=seed))))[0]

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)  # the seed reaches the sampler: it is not greedy in disguise


@cpu_only
def test_closing_a_stream_stops_generation_and_frees_the_engine(text_engine: TransformersTextEngine):
    params = GenerationParams(max_tokens=64, temperature=0)
    _, uncut = run(text_engine.chat(ChatCall(CHAT, params)))
    assert uncut.completion_tokens >= 30, "the uncut run must be long enough for a cut to show"

    forwards = 0

    def paced_forward(*_: Any) -> None:
        """Count decoding steps, each held 0.2 s so the close lands between two of them."""
        nonlocal forwards
        forwards += 1
        time.sleep(0.2)

    hook = text_engine.model.register_forward_hook(paced_forward)
    try:
        stream = text_engine.chat(ChatCall(CHAT, params))
        assert next(stream).finish_reason is None
        before_close = forwards
        stream.close()  # what the server does when a client goes away mid-stream
        after_close = forwards - before_close
    finally:
        hook.remove()

    assert after_close <= 1, f"{after_close} forward passes ran after close(): generation went on"
    assert forwards < uncut.completion_tokens // 2
    assert not text_engine._lock.locked()
    assert run(text_engine.chat(ChatCall(CHAT, GREEDY)))[1].completion_tokens > 0


def prompt_of(engine: TransformersTextEngine, tokens: int) -> str:
    """A raw prompt of exactly ``tokens`` tokens for ``engine``'s tokenizer."""
    ids = engine.tokenizer(" word" * (tokens * 2))["input_ids"][:tokens]
    text = engine.tokenizer.decode(ids)
    assert len(engine.tokenizer(text)["input_ids"]) == tokens
    return text


@cpu_only
def test_asking_for_more_tokens_than_the_context_holds_is_invalid(text_engine: TransformersTextEngine):
    window = text_engine.model.config.max_position_embeddings
    prompt = prompt_of(text_engine, window - 4)
    with pytest.raises(InvalidInput, match=f"context holds {window} tokens.*{window - 4} in the prompt, 8 to generate"):
        run(text_engine.complete(CompletionCall(prompt, GREEDY)))
    with pytest.raises(InvalidInput, match=f"context holds {window} tokens.*{window + 1} in the prompt"):
        run(text_engine.complete(CompletionCall(prompt_of(text_engine, window + 1), GREEDY)))


@cpu_only
def test_a_default_max_tokens_shrinks_to_the_context_left(text_engine: TransformersTextEngine):
    window = text_engine.model.config.max_position_embeddings
    params = GenerationParams(max_tokens=4096, temperature=0, max_tokens_requested=False)
    _, last = run(text_engine.complete(CompletionCall(prompt_of(text_engine, window - 3), params)))
    assert last.prompt_tokens == window - 3
    assert 0 < last.completion_tokens <= 3


# ---------------------------------------------------------------------------------------------
# Images: FLUX.1-schnell's production defaults


@pytest.fixture(scope="module")
def flux(store: Path) -> DiffusionEngine:
    production = load_catalog("production").get("flux.1-schnell")
    assert production is not None
    engine = load_engine(spec_for("flux", "text-to-image", defaults=production.defaults), tiny_folder(store, "flux"))
    assert isinstance(engine, DiffusionEngine)
    return engine


def count_calls(module: torch.nn.Module, seen: Callable[[tuple[Any, ...], dict[str, Any]], None]) -> Any:
    """A forward pre-hook handle that reports each call's arguments to ``seen``."""
    return module.register_forward_pre_hook(lambda _, args, kwargs: seen(args, kwargs), with_kwargs=True)


@cpu_only
def test_flux_generates_pngs_of_the_requested_size_with_catalog_defaults(flux: DiffusionEngine):
    steps: list[int] = []
    t5_lengths: list[int] = []
    hooks = [
        count_calls(flux.pipeline.transformer, lambda args, kwargs: steps.append(1)),
        count_calls(
            flux.pipeline.text_encoder_2,
            lambda args, kwargs: t5_lengths.append((args[0] if args else kwargs["input_ids"]).shape[-1]),
        ),
    ]
    try:
        images = flux.generate(ImageCall("a red apple on a table", n=2, width=64, height=32, seed=1))
    finally:
        for hook in hooks:
            hook.remove()

    assert len(images) == 2
    assert all(Image.open(io.BytesIO(png)).format == "PNG" for png in images)
    assert [Image.open(io.BytesIO(png)).size for png in images] == [(64, 32), (64, 32)]
    assert len(steps) == 4  # num_inference_steps from the catalog; no CFG pass with guidance 0
    assert t5_lengths == [256]  # max_sequence_length from the catalog


@cpu_only
def test_flux_seed_fixes_the_images(flux: DiffusionEngine):
    def generate(seed: int) -> list[bytes]:
        return flux.generate(ImageCall("a mountain lake", n=2, width=64, height=32, seed=seed))

    assert generate(1) == generate(1)
    assert generate(1) != generate(2)


@cpu_only
@pytest.mark.parametrize(("width", "height"), [(40, 32), (64, 24)])
def test_flux_rejects_sizes_off_the_latent_grid(flux: DiffusionEngine, width: int, height: int):
    assert flux.size_multiple == 16  # VAE factor 8 x 2x2 latent packing
    with pytest.raises(InvalidInput, match="multiples of 16"):
        flux.generate(ImageCall("a cat", n=1, width=width, height=height))


# ---------------------------------------------------------------------------------------------
# Embeddings: Matryoshka heads (Stella's 2_Dense_{dim} folders), truncation, prompts


@pytest.fixture(scope="module")
def mrl_folder(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM plus a 384->64 Dense head in ``2_Dense_64`` that modules.json does not list, as Stella ships them."""
    folder = tmp_path_factory.mktemp("minilm-mrl") / "model"
    shutil.copytree(tiny_folder(store, "minilm"), folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        head = Dense(in_features=384, out_features=HEAD_DIM, bias=True, activation_function=torch.nn.Identity())
    (folder / f"2_Dense_{HEAD_DIM}").mkdir()
    head.save(str(folder / f"2_Dense_{HEAD_DIM}"))
    return folder


@pytest.fixture(scope="module")
def embedder(mrl_folder: Path) -> SentenceEmbeddingEngine:
    spec = spec_for("minilm", "text-embedding", prompts={"query": "query: "})
    engine = load_engine(spec, mrl_folder)
    assert isinstance(engine, SentenceEmbeddingEngine)
    return engine


@cpu_only
def test_matryoshka_head_maps_the_pooled_embedding(embedder: SentenceEmbeddingEngine, mrl_folder: Path):
    model = SentenceTransformer(str(mrl_folder), device="cpu")
    assert [type(m) for m in model] == [Transformer, Pooling, Normalize]
    pooled = SentenceTransformer(modules=[model[0], model[1]], device="cpu")  # stop before Normalize
    head = Dense.load(str(mrl_folder / f"2_Dense_{HEAD_DIM}"))
    with torch.inference_mode():
        features = {"sentence_embedding": pooled.encode(TEXTS, convert_to_tensor=True)}
        expected = normalize(head(features)["sentence_embedding"])

    got = embedder.embed(TEXTS, dimensions=HEAD_DIM)
    assert got.shape == (len(TEXTS), HEAD_DIM)
    np.testing.assert_allclose(got, expected, atol=1e-5)


@cpu_only
def test_dimensions_without_a_head_truncate_and_renormalize(embedder: SentenceEmbeddingEngine):
    full = embedder.embed(TEXTS)
    assert full.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1.0, atol=1e-5)
    expected = normalize(torch.from_numpy(full[:, :32]))
    np.testing.assert_allclose(embedder.embed(TEXTS, dimensions=32), expected, atol=1e-6)


@cpu_only
def test_more_dimensions_than_the_model_has_is_invalid(embedder: SentenceEmbeddingEngine):
    with pytest.raises(InvalidInput, match="at most 384"):
        embedder.embed(TEXTS, dimensions=1000)


@cpu_only
def test_prompts_by_name(embedder: SentenceEmbeddingEngine):
    with pytest.raises(InvalidInput, match="unknown input_type 'passage'"):
        embedder.embed_items(TEXTS, "passage")
    plain, _ = embedder.embed_items(TEXTS)
    query, tokens = embedder.embed_items(TEXTS, "query")
    assert len(tokens) == len(TEXTS) and all(t > 0 for t in tokens)
    assert not np.allclose(query, plain, atol=1e-3)
    np.testing.assert_allclose(query, embedder.embed([f"query: {t}" for t in TEXTS]), atol=1e-5)


@cpu_only
def test_embeddings_run_in_fp32_on_the_cpu_whatever_the_checkpoint_holds(store: Path, tmp_path: Path):
    folder = save_decoder_embedder(tiny_folder(store, "qwen3"), tmp_path / "bf16-embedder", torch.bfloat16)
    assert next(SentenceTransformer(str(folder), device="cpu").parameters()).dtype == torch.bfloat16  # left alone

    engine = load_engine(spec_for("embedder", "text-embedding"), folder)
    assert {p.dtype for p in engine.model.parameters()} == {torch.float32}

    pinned = spec_for("embedder", "text-embedding", engine_args={"model_kwargs": {"dtype": "bfloat16"}})
    assert {p.dtype for p in load_engine(pinned, folder).model.parameters()} == {torch.bfloat16}  # the entry wins


# ---------------------------------------------------------------------------------------------
# vLLM stays optional: chosen only where there are GPUs, never imported on CPU


@pytest.mark.parametrize(
    ("capability", "engine", "gpus", "expected"),
    [
        ("text-to-text", "auto", 1, "vllm"),
        ("vision", "auto", 1, "vllm"),
        ("text-to-text", "auto", 0, "transformers"),
        ("vision", "auto", 0, "transformers"),
        ("text-to-text", "transformers", 1, "transformers"),  # an explicit engine wins over the hardware
        ("text-embedding", "auto", 1, "sentence-transformers"),
    ],
)
def test_engine_kind(capability: str, engine: str, gpus: int, expected: str):
    assert engine_kind(spec_for("any", capability, engine=engine), gpus=gpus) == expected


@cpu_only
def test_cpu_text_engine_never_imports_vllm(store: Path):
    """In a fresh interpreter, so it means something where vLLM is installed (``make test`` runs this
    file in the vLLM venv too) and no other test of the session has imported it."""
    folder = tiny_folder(store, "phi3")
    probe = (
        "import sys; from candle.catalog import ModelSpec; from candle.engines import load_engine; "
        f"spec = ModelSpec(name='phi3', capability='text-to-text', repo_id='{TINY_MODELS['phi3']}'); "
        f"print(type(load_engine(spec, {str(folder)!r})).__name__, 'vllm' in sys.modules)"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.split() == ["TransformersTextEngine", "False"]


def test_vllm_engine_module_imports_without_vllm(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now fails, installed or not
    monkeypatch.delitem(sys.modules, "candle.engines.chat.vllm", raising=False)
    module = importlib.import_module("candle.engines.chat.vllm")
    assert isinstance(module.VLLMEngine, type)


def test_vllm_engine_without_vllm_says_how_to_get_it(store: Path, monkeypatch: pytest.MonkeyPatch):
    """What a replica's failed status shows on a node without the gpu extra (a GPU node with ``engine: auto``)."""
    monkeypatch.setitem(sys.modules, "vllm", None)
    spec = spec_for("qwen3", "text-to-text", engine="vllm")
    with pytest.raises(ModuleNotFoundError, match=r"qwen3: engine vllm needs vLLM.*install candle\[gpu\] on GPU nodes"):
        load_engine(spec, tiny_folder(store, "qwen3"))


def test_gateway_loads_without_torch():
    """The gateway only routes and renders JSON: torch would cost each gateway replica ~1 s and ~200 MB."""
    probe = "import sys, deployments.gateway; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
