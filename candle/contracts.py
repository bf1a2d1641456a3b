"""What crosses the layers: the calls a replica hands its engine, what engines stream back, and the
engine interfaces, typed once here.

The bottom layer: the API layer, the engines and the deployments all import it, so it imports
nothing of candle's and no torch, FastAPI or Ray (a test enforces it), which keeps the gateway's
imports light. Each engine kind is a ``Protocol``; an engine declares once, with ``streams``,
whether its generators are plain (run in a worker thread) or async (iterated on the loop).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np

StreamKind = Literal["sync", "async"]


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of one tool call, streamed the way OpenAI does: id and name first, arguments in pieces."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class TextChunk:
    """A piece of generated output; the last one carries the finish reason and token counts.

    ``text`` is answer content; ``reasoning`` and ``tool_calls`` are filled only by engines with
    output parsers (vLLM's reasoning and tool-call parsers), which split them out of the raw text.
    """

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()


@dataclass(frozen=True)
class ChatCall:
    """One chat turn. ``messages`` use ``{"type": "image"}`` placeholders, one per entry of ``images``,
    in order: encoded bytes from the gateway to the replica, decoded images from the replica on."""

    messages: list[dict[str, Any]]
    params: GenerationParams
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None  # tools reach every template; only vLLM's parsers act on it
    images: tuple[Any, ...] = ()


@dataclass(frozen=True)
class CompletionCall:
    prompt: str
    params: GenerationParams


@dataclass(frozen=True)
class ImageCall:
    """``n`` pictures of ``width`` x ``height``; ``None`` fields take the catalog's defaults."""

    prompt: str
    width: int
    height: int
    n: int = 1
    seed: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None


TextStream = Iterator[TextChunk] | AsyncIterator[TextChunk]


@runtime_checkable
class ChatEngine(Protocol):
    """Vision engines; text-to-text ones are ``CompletionEngine``s too."""

    streams: ClassVar[StreamKind]

    def chat(self, call: ChatCall) -> TextStream: ...


@runtime_checkable
class CompletionEngine(ChatEngine, Protocol):
    """Text-to-text engines: chat and plain completions."""

    def complete(self, call: CompletionCall) -> TextStream: ...


@runtime_checkable
class EmbeddingEngine(Protocol):
    """Text and image embedding engines: one vector per item and the tokens each used."""

    def embed_items(
        self, items: list[str | bytes], prompt_name: str | None = None, dimensions: int | None = None
    ) -> tuple[np.ndarray, list[int]]: ...


@runtime_checkable
class ImageEngine(Protocol):
    """Text-to-image engines: PNG bytes. Blocking: the replica runs it in a thread."""

    def generate(self, call: ImageCall) -> list[bytes]: ...


Engine = ChatEngine | CompletionEngine | EmbeddingEngine | ImageEngine
