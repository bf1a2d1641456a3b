"""Chat replicas for text-to-text and vision models, streamed chunk by chunk to the gateway.

Both capabilities share one replica class: a vision request only adds images (validated by the
gateway, decoded here) matched to ``{"type": "image"}`` placeholders in the messages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from candle.catalog import ModelSpec
from candle.contracts import ChatCall, CompletionCall, CompletionEngine, Sent, TextChunk, TextStream
from candle.engines.chat.idle_sleep import IdleSleep
from candle.engines.image_decoding import decode_image

from .. import metrics
from .base import ModelReplica, iterate
from .pacing import paced


class ChatReplica(ModelReplica):
    # Vision models' engines are ChatEngines only: the registry routes no completions to them.
    engine: CompletionEngine

    async def __init__(self, spec: dict[str, Any] | ModelSpec) -> None:  # type: ignore[misc]  # an async constructor: Ray Serve awaits it
        await super().__init__(spec)
        idle = getattr(self.engine, "idle", None)  # vLLM with sleep_after_s: the idle clock runs from the load
        if isinstance(idle, IdleSleep):
            idle.start()

    async def chat(self, call: ChatCall) -> AsyncIterator[TextChunk]:
        decoded = replace(call, images=tuple(decode_image(data) for data in call.images))
        async for chunk in self._paced(call, self.engine.chat(decoded)):
            yield chunk

    async def complete(self, call: CompletionCall) -> AsyncIterator[TextChunk]:
        async for chunk in self._paced(call, self.engine.complete(call)):
            yield chunk

    def _paced(self, call: Sent, chunks: TextStream) -> AsyncIterator[TextChunk]:
        """The engine's pieces, measured as they come, then merged per ``stream_interval_ms``."""
        measured = metrics.text_stream(self.spec, call, iterate(self.engine, chunks))
        return paced(measured, self.spec.stream_interval_ms / 1000)
