"""What crosses the layers: the calls a replica hands its engine, what engines stream back, and the
engine interfaces, typed once here.

The bottom layer: the API layer, the engines and the deployments all import it, so it imports
nothing of candle's and no torch, FastAPI or Ray (a test enforces it), which keeps the gateway's
imports light. Each engine kind is a ``Protocol``; an engine declares once, with ``streams``,
whether its generators are plain (run in a worker thread) or async (iterated on the loop).
"""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np

StreamKind = Literal["sync", "async"]
# Set on the replicas of a model that brings its own Ray runtime_env (placement.py), to the model's name:
# such a process never brings up node-wide actors, which would inherit its libraries (download.factory).
MODEL_RUNTIME_ENV_VAR = "CANDLE_MODEL_RUNTIME_ENV"
# The image formats candle reads (PIL's names): the gateway checks clients' images against them and
# replicas decode with nothing else, so no other PIL plugin (EPS runs Ghostscript) ever sees input.
IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF")
# What PIL's decoders raise on malformed input: OSError (truncation, unknown formats) and the rest.
IMAGE_DECODE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
)


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


# -- download progress: what the downloader reports and the CLI, jobs, metrics and /v1/models read --

FileState = Literal["queued", "downloading", "done", "failed"]
DownloadState = Literal["resolving", "downloading", "done", "failed"]
# Where a blob's bytes come from: the hub, a peer's verified copy, a peer still receiving it (a
# relay), a shared cache another node filled, or this node's own cache.
BlobSource = Literal["hub", "peer", "relay", "shared", "cache"]


class _Totals:
    """Bytes done and total, rate and ETA of something made of ``parts`` (files, or nodes)."""

    @property
    def parts(self) -> tuple[Any, ...]:
        raise NotImplementedError

    @property
    def bytes_done(self) -> int:
        return sum(part.bytes_done for part in self.parts)

    @property
    def bytes_total(self) -> int:
        return sum(part.bytes_total for part in self.parts)

    @property
    def rate(self) -> float:
        return sum(part.rate for part in self.parts)

    @property
    def eta_s(self) -> float | None:
        rate = self.rate
        return max(0, self.bytes_total - self.bytes_done) / rate if rate > 0 else None


@dataclass(frozen=True)
class FileProgressRecord:
    path: str
    state: FileState
    bytes_done: int
    bytes_total: int
    rate: float  # bytes/s over the last few seconds
    source: BlobSource | None = None  # None: not started
    upstream: str | None = None  # the node id it copies from (peer or relay)


@dataclass(frozen=True)
class RepoProgressRecord(_Totals):
    """One model at one revision on one node, as its downloader sees it now."""

    repo_id: str
    revision: str
    commit: str | None
    state: DownloadState
    error: str | None
    files: tuple[FileProgressRecord, ...] = ()

    @property
    def parts(self) -> tuple[FileProgressRecord, ...]:
        return self.files


@dataclass(frozen=True)
class ModelProgress(_Totals):
    """One model across the nodes fetching it: ``(node id, that node's record)`` pairs."""

    nodes: tuple[tuple[str, RepoProgressRecord], ...]

    @property
    def parts(self) -> tuple[RepoProgressRecord, ...]:
        return tuple(record for _, record in self.nodes)

    @property
    def in_flight(self) -> bool:
        return any(record.state in ("resolving", "downloading") for record in self.parts)

    def as_json(self) -> dict[str, Any]:
        """The ``progress`` object of ``/v1/models`` and of 503 answers."""
        total = self.bytes_total
        eta = self.eta_s
        return {
            "bytes_done": self.bytes_done,
            "bytes_total": total,
            "fraction": round(self.bytes_done / total, 4) if total else 1.0,
            "rate_bytes_per_s": round(self.rate, 1),
            "eta_s": round(eta, 1) if eta is not None else None,
            "nodes": [
                {
                    "node_id": node,
                    "state": r.state,
                    "bytes_done": r.bytes_done,
                    "bytes_total": r.bytes_total,
                    "error": r.error,
                    "commit": r.commit,
                    "rate_bytes_per_s": round(r.rate, 1),
                    "transfers": [
                        {
                            "path": f.path,
                            "source": f.source,
                            "upstream": f.upstream,
                            "bytes_done": f.bytes_done,
                            "bytes_total": f.bytes_total,
                            "rate_bytes_per_s": round(f.rate, 1),
                        }
                        for f in r.files
                        if f.state == "downloading"
                    ],
                }
                for node, r in self.nodes
            ],
        }
