"""A batch row in, the typed call for its model out; a result back, the output record out.

Rows are validated with the gateway's own request schemas (a row is a request body with an
``id`` and without ``model``), so a row is refused for exactly what the HTTP API would refuse,
and becomes the same ``candle.contracts`` call a replica gets from the gateway. Records are JSON
text, one per row: the output's ``{"id", ...}`` or the errors file's ``{"id", "error"}``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import orjson
from pydantic import BaseModel, Field, ValidationError

from candle.api import calls
from candle.api.calls import ImageAccess
from candle.api.errors import APIError
from candle.api.limits import DEFAULT_MAX_BODY_BYTES
from candle.api.responses import AssistantMessage, ranking
from candle.api.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ImageGenerationRequest,
    RerankRequest,
)
from candle.catalog import ModelSpec
from candle.contracts import ChatCall, CompletionCall, EmbedCall, ImageCall, RerankCall
from candle.raycluster import error_line


@dataclass(frozen=True)
class RerankRow:
    """A rerank row's call, and which of its results the record shows (as the HTTP answer would)."""

    call: RerankCall
    top_n: int | None
    return_documents: bool

    def ranked(self, scores: np.ndarray) -> Ranked:
        return Ranked(ranking(self.call, scores, self.top_n, self.return_documents))


@dataclass(frozen=True)
class Ranked:
    """A rerank row's results: Cohere's ``results``, best first."""

    results: list[dict[str, Any]]


RowId = str | int
Work = EmbedCall | RerankRow | ChatCall | CompletionCall | ImageCall
# What one row's work gives back: vectors, ranked documents, a whole answer, or PNG images.
Result = tuple[np.ndarray, int] | Ranked | AssistantMessage | list[bytes]

# A row's images: data URLs of at most the gateway's default body size (a batch reads no web).
IMAGES = ImageAccess(max_bytes=DEFAULT_MAX_BODY_BYTES)
PNG_KEY = "png"  # a record's base64 PNG, which the driver writes to a file and replaces by its path


class RowError(ValueError):
    """A row the job cannot run: its one-line reason goes to the errors file."""


class Row(BaseModel):
    # An integer id must fit the 64 bits that Parquet's id column and the JSON writer hold.
    id: str | Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


def read_row(raw: bytes | str) -> tuple[RowId | None, dict[str, Any] | RowError]:
    """The row's id (None where it has no valid one) and the row, or why it is no row."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return undecodable_row_id(e.object), RowError(f"the row is not UTF-8 text: {e.reason} at byte {e.start}")
    try:
        row = json.loads(raw)
    except ValueError:
        return None, RowError("the row is not JSON")
    if not isinstance(row, dict):
        return None, RowError("the row is not a JSON object")
    try:
        return Row.model_validate(row).id, row
    except ValidationError:
        return None, RowError("the row has no 'id' (a string or a 64-bit integer)")


def undecodable_row_id(raw: bytes) -> RowId | None:
    """The id of a row that is not UTF-8, where the id itself is (so its error names its row): read
    with U+FFFD for each bad byte, an id that holds one is none (it may be another row's)."""
    row_id, _ = read_row(raw.decode("utf-8", "replace"))
    return None if isinstance(row_id, str) and "\ufffd" in row_id else row_id


def id_key(raw: bytes | str) -> str:
    """A row's identity across runs, as the output and errors files hold it: its id as JSON text
    (``null`` for every row without a valid id, whose error is then recorded once)."""
    return json.dumps(read_row(raw)[0])


async def parse(spec: ModelSpec, raw: bytes | str) -> tuple[RowId | None, Work | Exception]:
    """The row's id and its call, or why it cannot be run."""
    row_id, row = read_row(raw)
    if isinstance(row, RowError):
        return row_id, row
    body = {key: value for key, value in row.items() if key != "id"} | {"model": spec.name}
    try:
        return row_id, await work(spec, body)
    except Exception as e:
        return row_id, e


async def work(spec: ModelSpec, body: dict[str, Any]) -> Work:
    """The call a replica of ``spec`` runs for one row's ``body``, built as the gateway builds it, from
    one input: one string, one answer, one image, one query and its documents."""
    if spec.capability in ("text-embedding", "image-embedding"):
        embedding = EmbeddingRequest.model_validate(body)
        if not isinstance(embedding.input, str):
            raise RowError("'input' must be one string per row")
        return await calls.embed_call(embedding, spec, IMAGES)
    if spec.capability == "rerank":
        rerank = RerankRequest.model_validate(body)
        return RerankRow(calls.rerank_call(rerank, spec), rerank.top_n, rerank.return_documents)
    if spec.capability == "text-to-image":
        image = ImageGenerationRequest.model_validate(body)
        one_per_row(image.n, "'n' must be 1: one image per row")
        return calls.image_call(image, spec)
    if "messages" in body or spec.capability == "vision":
        chat = ChatCompletionRequest.model_validate(body)
        one_per_row(chat.n, "'n' must be 1: one answer per row")
        return await calls.chat_call(chat, spec, IMAGES)
    completion = CompletionRequest.model_validate(body)
    if not isinstance(completion.prompt, str):
        raise RowError("'prompt' must be one string per row")
    one_per_row(completion.n, "'n' must be 1: one answer per row")
    (call,) = calls.completion_calls(completion, spec)
    return call


def one_per_row(n: int, message: str) -> None:
    if n != 1:
        raise RowError(message)


def success_record(row_id: RowId | None, result: Result) -> str:
    fields: dict[str, Any]
    if isinstance(result, Ranked):
        fields = {"results": result.results}
    elif isinstance(result, AssistantMessage):
        message = result.as_dict()
        fields = {"text": result.text, "finish_reason": result.finish_reason}
        fields |= {key: message[key] for key in ("tool_calls", "reasoning") if key in message}
    elif isinstance(result, list):
        fields = {PNG_KEY: base64.b64encode(result[0]).decode()}
    else:
        fields = {"embedding": np.ascontiguousarray(result[0][0], dtype=np.float32)}
    return record({"id": row_id, **fields})


def error_record(row_id: RowId | None, error: BaseException) -> str:
    return record({"id": row_id, "error": reason(error)})


def record(fields: dict[str, Any]) -> str:
    """A record's JSON text. orjson writes a float32 vector in its shortest exact form, about 20x
    faster than ``json`` and in half the characters: at hundreds of rows a second, ``json`` took a
    tenth of an embedding job's time."""
    return orjson.dumps(fields, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def reason(error: BaseException) -> str:
    """One line saying why a row failed: the field and what is wrong with it, or the engine's error."""
    if isinstance(error, ValidationError) and error.errors():
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "row"
        return f"invalid row: {field}: {first['msg']}"
    if isinstance(error, APIError):
        return f"invalid row: {error.message}"
    if isinstance(error, RowError):
        return f"invalid row: {error}"
    return error_line(error)
