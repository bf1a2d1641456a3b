"""Chat replicas for text-to-text and vision models, streamed chunk by chunk to the gateway.

Both capabilities share one replica class: a vision request only adds images (validated by the
gateway, decoded here) matched to ``{"type": "image"}`` placeholders in the messages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from candle.api.images import decode_image
from candle.engines.chat_types import GenerationParams, TextChunk

from .base import ModelReplica, iterate


class ChatReplica(ModelReplica):
    async def chat(
        self,
        messages: list[dict[str, Any]],
        params: GenerationParams,
        tools: list[dict[str, Any]] | None = None,
        images: list[bytes] | None = None,
        tool_choice: Any = None,
    ) -> AsyncIterator[TextChunk]:
        decoded = [decode_image(data) for data in images or ()]
        async for chunk in iterate(self.engine.chat(messages, params, tools, decoded, tool_choice)):
            yield chunk

    async def complete(self, prompt: str, params: GenerationParams) -> AsyncIterator[TextChunk]:
        async for chunk in iterate(self.engine.complete(prompt, params)):
            yield chunk


TextGeneration = serve.deployment(ChatReplica, name="TextGeneration")
VisionChat = serve.deployment(ChatReplica, name="VisionChat")
