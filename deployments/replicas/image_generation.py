"""Text-to-image replicas: diffusers pipelines, one generation at a time per replica, in a thread."""

from __future__ import annotations

import asyncio

from candle.contracts import ImageCall, ImageEngine

from .. import metrics
from .base import ModelReplica


class ImageGenerationReplica(ModelReplica):
    engine: ImageEngine

    async def generate(self, call: ImageCall) -> list[bytes]:
        metrics.calls_started(self.spec, [call])
        metrics.pass_started(self.spec, call.n)
        return await asyncio.to_thread(self.engine.generate, call)
