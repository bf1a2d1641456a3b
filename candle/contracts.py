"""What crosses the layers: the calls a replica hands its engine, what engines stream back, and the
engine interfaces, typed once here.

The bottom layer: the API layer, the engines and the deployments all import it, so it imports
nothing of candle's and no torch, FastAPI or Ray (a test enforces it), which keeps the gateway's
imports light. Each engine kind is a ``Protocol``; an engine declares once, with ``streams``,
whether its generators are plain (run in a worker thread) or async (iterated on the loop).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np

StreamKind = Literal["sync", "async"]


@dataclass(frozen=True)
class ResponseFormat:
    """The shape the answer must take: free text, any JSON object, or JSON valid against a schema.

    ``schema`` is the client's JSON schema serialized (a frozen, hashable value that every backend
    compiles itself); ``name`` and ``strict`` are kept for backends that take OpenAI's field as is.
    """

    type: Literal["text", "json_object", "json_schema"] = "text"
    schema: str | None = None
    name: str = ""
    strict: bool | None = None

    def as_openai(self) -> dict[str, Any] | None:
        """OpenAI's ``response_format`` field (``None`` for free text, the default)."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return {"type": "json_object"}
        schema = {"name": self.name, "schema": json.loads(self.schema or "{}"), "strict": self.strict}
        return {"type": "json_schema", "json_schema": schema}


@dataclass(frozen=True)
class GenerationParams:
    """Sampling for one request. ``max_tokens_requested`` is False when ``max_tokens`` is the catalog's
    default: then it shrinks to the context the prompt leaves, where a client's own value is refused."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    response_format: ResponseFormat = ResponseFormat()
    max_tokens_requested: bool = True


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

    @property
    def has_output(self) -> bool:
        """Whether the piece carries any of the answer: the first that does is the first token."""
        return bool(self.text or self.reasoning or self.tool_calls)


@dataclass(frozen=True)
class Sent:
    """What every call carries besides its input: ``sent_at``, the wall-clock time (``time.time()``) the
    gateway handed it to the model's replica, so the replica's queue time counts the wait for a free
    replica too. ``None`` for calls from elsewhere (the batch job); never compared, so two calls of the
    same input are equal."""

    sent_at: float | None = field(default=None, kw_only=True, compare=False)


@dataclass(frozen=True)
class ChatCall(Sent):
    """One chat turn. ``messages`` use ``{"type": "image"}`` placeholders, one per entry of ``images``,
    in order: encoded bytes from the gateway to the replica, decoded images from the replica on."""

    messages: list[dict[str, Any]]
    params: GenerationParams
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None  # tools reach every template; only vLLM's parsers act on it
    images: tuple[Any, ...] = ()


@dataclass(frozen=True)
class CompletionCall(Sent):
    prompt: str
    params: GenerationParams


@dataclass(frozen=True)
class ImageCall(Sent):
    """``n`` pictures of ``width`` x ``height``; ``None`` fields take the catalog's defaults."""

    prompt: str
    width: int
    height: int
    n: int = 1
    seed: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None


@dataclass(frozen=True)
class EmbedCall(Sent):
    """Texts (or encoded images, for image embeddings) to embed in order, under one prompt and size."""

    items: tuple[str | bytes, ...]
    prompt_name: str | None = None
    dimensions: int | None = None


@dataclass(frozen=True)
class RerankCall(Sent):
    """Documents to score against one query, in order, under one prompt (an instruction, for rerankers
    that take one) and with each document cut to at most ``max_tokens_per_doc`` tokens."""

    query: str
    documents: tuple[str, ...]
    prompt_name: str | None = None
    max_tokens_per_doc: int | None = None


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
class RerankEngine(Protocol):
    """Rerankers: a relevance score per (query, document) pair and the tokens each pair used."""

    def score_pairs(
        self, pairs: list[tuple[str, str]], prompt_name: str | None = None, max_tokens_per_doc: int | None = None
    ) -> tuple[np.ndarray, list[int]]: ...


@runtime_checkable
class ImageEngine(Protocol):
    """Text-to-image engines: PNG bytes. Blocking: the replica runs it in a thread."""

    def generate(self, call: ImageCall) -> list[bytes]: ...


Engine = ChatEngine | CompletionEngine | EmbeddingEngine | RerankEngine | ImageEngine
