"""Text-to-image with diffusers (SD3, FLUX), returning PNG bytes.

On a multi-GPU replica the pipeline's components are spread over the GPUs with diffusers'
``device_map="balanced"``; on one GPU it moves whole; on CPU it stays in fp32.
"""

from __future__ import annotations

import inspect
import io
import threading
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline

from candle.catalog import ModelSpec
from candle.contracts import ImageCall

from ..device import dtype, gpu_count
from ..errors import InvalidInput


class DiffusionEngine:
    def __init__(self, folder: Path, spec: ModelSpec) -> None:
        gpus = gpu_count()
        placement: dict[str, Any] = {"device_map": "balanced"} if gpus > 1 else {}
        self.pipeline = DiffusionPipeline.from_pretrained(folder, dtype=dtype(), **placement, **spec.engine_args)
        if gpus == 1:
            self.pipeline.to("cuda")
        self.pipeline.set_progress_bar_config(disable=True)
        self.defaults = dict(spec.defaults)
        self._accepts = set(inspect.signature(self.pipeline.__call__).parameters)
        # SD3 and FLUX both patchify the VAE latents in 2x2 patches: sides must be multiples of this.
        patch = getattr(getattr(self.pipeline, "transformer", None), "config", {}).get("patch_size", 1) or 1
        self.size_multiple = int(getattr(self.pipeline, "vae_scale_factor", 8)) * max(2, int(patch))
        self._lock = threading.Lock()

    def generate(self, call: ImageCall) -> list[bytes]:
        """``call.n`` PNG images; catalog defaults fill what the request leaves out."""
        width, height = call.width, call.height
        if width % self.size_multiple or height % self.size_multiple:
            raise InvalidInput(f"size must have sides that are multiples of {self.size_multiple}, got {width}x{height}")
        options: dict[str, Any] = {**self.defaults, "num_images_per_prompt": call.n, "width": width, "height": height}
        if call.num_inference_steps is not None:
            options["num_inference_steps"] = call.num_inference_steps
        if call.guidance_scale is not None:
            options["guidance_scale"] = call.guidance_scale
        options = {k: v for k, v in options.items() if k in self._accepts}
        generator = torch.Generator("cpu").manual_seed(call.seed) if call.seed is not None else None
        with self._lock, torch.inference_mode():
            images = self.pipeline(call.prompt, generator=generator, output_type="pil", **options).images
        return [_png(image) for image in images]


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
