"""How much memory a model takes once loaded, and handing it back once it is unloaded.

A pool replica (``deployments/replicas/pool.py``) holds several models in one process: it keeps their
estimated sizes within its memory booking, and frees an unloaded model's memory for the next one.
"""

from __future__ import annotations

import ctypes
import gc
import platform
from pathlib import Path

import torch
from safetensors import safe_open

from candle.catalog import ModelSpec

from .device import dtype

# Pickled checkpoints, counted as stored where a folder has no safetensors (loaders prefer those).
PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
_FLOATS = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


def load_itemsize(spec: ModelSpec) -> int:
    """Bytes per floating-point weight once loaded: candle's dtype for this replica (fp32 on CPU, bf16
    on GPU), or the one an entry pins (``engine_args: {model_kwargs: {dtype: float16}}``)."""
    pinned = (spec.engine_args.get("model_kwargs") or {}).get("dtype")
    chosen = getattr(torch, pinned, None) if isinstance(pinned, str) else None
    return (chosen if isinstance(chosen, torch.dtype) else dtype()).itemsize


def estimated_bytes(folder: Path, itemsize: int) -> int:
    """A model's weights in memory once loaded from ``folder`` (a snapshot): each safetensors tensor's
    elements at ``itemsize`` bytes when floating point, as stored otherwise; in a folder without
    safetensors, its pickled checkpoints' bytes. Activations and the libraries come on top."""
    total = 0
    folders = {path.parent for path in folder.rglob("*") if path.is_file()}
    for where in sorted(folders):
        tensors = sorted(where.glob("*.safetensors"))
        if tensors:
            total += sum(_safetensors_bytes(path, itemsize) for path in tensors)
        else:
            total += sum(path.stat().st_size for pattern in PICKLED_WEIGHTS for path in where.glob(pattern))
    return total


def _safetensors_bytes(path: Path, itemsize: int) -> int:
    total = 0
    with safe_open(path, framework="pt") as tensors:
        for name in tensors.keys():  # noqa: SIM118 - a safetensors handle is not a mapping
            piece = tensors.get_slice(name)
            elements = 1
            for size in piece.get_shape():
                elements *= size
            stored = piece.get_dtype()
            total += elements * (itemsize if stored in _FLOATS else _STORED_ITEMSIZE.get(stored, 8))
    return total


_STORED_ITEMSIZE = {"I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def release_memory() -> None:
    """Give the memory of objects just dropped back to the system: collect reference cycles (torch
    modules hold many), empty torch's CUDA cache, and have glibc return its freed heap pages, which it
    otherwise keeps for the process (a CPU model's tensors are many large ``malloc``s)."""
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    if platform.libc_ver()[0] == "glibc":
        ctypes.CDLL(None).malloc_trim(0)
