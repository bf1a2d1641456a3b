"""Text-to-image replicas: diffusers pipelines, one generation at a time per replica, in a thread."""

from __future__ import annotations

import asyncio

from ray import serve

from .base import ModelReplica


class ImageGenerationReplica(ModelReplica):
    async def generate(
        self,
        prompt: str,
        n: int,
        width: int,
        height: int,
        seed: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
    ) -> list[bytes]:
        return await asyncio.to_thread(
            self.engine.generate,
            prompt,
            n=n,
            width=width,
            height=height,
            seed=seed,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
        )


ImageGeneration = serve.deployment(ImageGenerationReplica, name="ImageGeneration")
