"""Engines: plain model code (no Ray Serve) that loads from a local snapshot folder.

``load_engine`` picks the engine of a catalog entry for the hardware the replica got: vLLM for
text-to-text and vision where the replica has GPUs (or the entry says ``engine: vllm``), the
transformers / sentence-transformers / diffusers engines otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from candle.catalog import ModelSpec


def engine_kind(spec: ModelSpec, gpus: int) -> str:
    if spec.engine != "auto":
        return spec.engine
    if spec.capability in ("text-to-text", "vision"):
        return "vllm" if gpus else "transformers"
    return {"text-embedding": "sentence-transformers", "text-to-image": "diffusers", "image-embedding": "clip"}[
        spec.capability
    ]


def load_engine(spec: ModelSpec, folder: Path) -> Any:
    """Load ``spec``'s engine from ``folder`` (blocking: call it in a thread)."""
    from .device import gpu_count  # torch: imported here so the gateway's `candle.engines` imports stay light

    kind = engine_kind(spec, gpu_count())
    if kind == "vllm":
        from .vllm_text import VLLMEngine

        return VLLMEngine(folder, spec)
    if kind == "transformers" and spec.capability == "vision":
        from .vision import LlavaEngine

        return LlavaEngine(folder, spec)
    if kind == "transformers":
        from .text import TransformersTextEngine

        return TransformersTextEngine(folder, spec)
    if kind == "sentence-transformers":
        from .embeddings import SentenceEmbeddingEngine

        return SentenceEmbeddingEngine(folder, spec)
    if kind == "diffusers":
        from .images import DiffusionEngine

        return DiffusionEngine(folder, spec)
    if kind == "clip":
        from .clip import ClipEngine

        return ClipEngine(folder, spec)
    raise ValueError(f"{spec.name}: engine {kind!r} cannot serve {spec.capability}")
