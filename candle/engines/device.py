"""Which device and dtype an engine loads onto: the GPUs Ray gave the replica, else the CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from candle.catalog import ModelSpec


def gpu_count() -> int:
    """GPUs this process may use (Ray sets ``CUDA_VISIBLE_DEVICES`` for replicas that ask for them)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def device() -> str:
    return "cuda" if gpu_count() else "cpu"


def dtype() -> torch.dtype:
    """bf16 on GPUs; fp32 on CPU, where half precision is slow or unsupported for many kernels."""
    return torch.bfloat16 if gpu_count() else torch.float32


def load_model(model_class: Any, folder: Path, spec: ModelSpec, **kwargs: Any) -> Any:
    """``model_class.from_pretrained`` on this replica's device and dtype, in eval mode."""
    model = model_class.from_pretrained(folder, dtype=dtype(), **kwargs, **spec.engine_args).to(device())
    return model.eval()
