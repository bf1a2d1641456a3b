"""Engines: plain model code (no Ray Serve) that loads from a local snapshot folder.

``load_engine`` picks the engine of a catalog entry for the hardware the replica got: vLLM for
text-to-text and vision where the replica has GPUs (or the entry says ``engine: vllm``), the
transformers / sentence-transformers / diffusers engines otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

from candle.catalog import ModelSpec
from candle.catalog.capabilities import REGISTRY, resolve
from candle.contracts import Engine


def engine_kind(spec: ModelSpec, gpus: int) -> str:
    if spec.engine != "auto":
        return spec.engine
    info = REGISTRY[spec.capability]
    return info.gpu_engine if gpus else info.cpu_engine


def load_engine(spec: ModelSpec, folder: Path) -> Engine:
    """Load ``spec``'s engine from ``folder`` (blocking: call it in a thread): the registry's engine
    for the entry's capability, which implements that capability's ``candle.contracts`` protocol."""
    from .device import gpu_count, use_cpu_threads  # torch: here, so the gateway's imports stay light

    use_cpu_threads(spec)
    info = REGISTRY[spec.capability]
    engine = resolve(info.engines[engine_kind(spec, gpu_count())])(folder, spec)
    if not isinstance(engine, info.protocol):
        raise TypeError(f"{spec.name}: {type(engine).__name__} does not implement {info.protocol.__name__}")
    return cast(Engine, engine)  # checked just now, against a protocol the registry holds as a value
