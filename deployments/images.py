"""Text-to-image replicas: diffusers pipelines, one generation at a time per replica, in a thread."""

from __future__ import annotations

import asyncio

from candle.contracts import ImageCall

from .base import ModelReplica


class ImageGenerationReplica(ModelReplica):
    async def generate(self, call: ImageCall) -> list[bytes]:
        return await asyncio.to_thread(self.engine.generate, call)
