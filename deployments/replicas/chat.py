"""Chat replicas for text-to-text and vision models, streamed chunk by chunk to the gateway.

Both capabilities share one replica class: a vision request only adds images (validated by the
gateway, decoded here) matched to ``{"type": "image"}`` placeholders in the messages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

from candle.contracts import ChatCall, CompletionCall, CompletionEngine, TextChunk
from candle.engines.image_decoding import decode_image

from .. import metrics
from .base import ModelReplica, iterate


class ChatReplica(ModelReplica):
    # Vision models' engines are ChatEngines only: the registry routes no completions to them.
    engine: CompletionEngine

    async def chat(self, call: ChatCall) -> AsyncIterator[TextChunk]:
        decoded = replace(call, images=tuple(decode_image(data) for data in call.images))
        async for chunk in metrics.text_stream(self.spec, call, iterate(self.engine, self.engine.chat(decoded))):
            yield chunk

    async def complete(self, call: CompletionCall) -> AsyncIterator[TextChunk]:
        async for chunk in metrics.text_stream(self.spec, call, iterate(self.engine, self.engine.complete(call))):
            yield chunk
