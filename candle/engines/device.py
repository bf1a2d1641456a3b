"""Which device and dtype an engine loads onto: the GPUs Ray gave the replica, else the CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from candle.catalog import ModelSpec


def gpu_count() -> int:
    """GPUs this process may use (Ray sets ``CUDA_VISIBLE_DEVICES`` for replicas that ask for them)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def use_cpu_threads(spec: ModelSpec) -> None:
    """torch's thread count from the entry's ``resources.cpu_threads``, where it names one: Ray set
    ``OMP_NUM_THREADS`` from ``num_cpus`` (one thread for a fraction of a core), which torch read at
    import. Process-wide, threads started later included: a replica holds one engine, or a pool's
    engines, which all take the pool's resources."""
    if spec.resources.cpu_threads is not None:
        torch.set_num_threads(spec.resources.cpu_threads)


def device() -> str:
    return "cuda" if gpu_count() else "cpu"


def dtype() -> torch.dtype:
    """bf16 on GPUs; fp32 on CPU, where half precision is slow or unsupported for many kernels."""
    return torch.bfloat16 if gpu_count() else torch.float32


def load_model(model_class: Any, folder: Path, spec: ModelSpec, **kwargs: Any) -> Any:
    """``model_class.from_pretrained`` on this replica's device and dtype, in eval mode."""
    model = model_class.from_pretrained(folder, dtype=dtype(), **kwargs, **spec.engine_args).to(device())
    return model.eval()
