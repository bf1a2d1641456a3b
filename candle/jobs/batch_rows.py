"""A batch row in, the typed call for its model out; a result back, the output record out.

Rows are validated with the gateway's own request schemas (a row is a request body with an
``id`` and without ``model``), so a row is refused for exactly what the HTTP API would refuse,
and becomes the same ``candle.contracts`` call a replica gets from the gateway. Records are JSON
text, one per row: the output's ``{"id", ...}`` or the errors file's ``{"id", "error"}``.
"""

from __future__ import annotations

import base64
import json
from typing import Annotated, Any

import numpy as np
import orjson
from pydantic import BaseModel, Field, ValidationError

from candle.api.conversation import template_conversation
from candle.api.errors import APIError
from candle.api.images import is_image_reference, load_image_bytes
from candle.api.limits import check_input_chars
from candle.api.responses import AssistantMessage
from candle.api.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ImageGenerationRequest,
)
from candle.catalog import ModelSpec
from candle.contracts import ChatCall, CompletionCall, GenerationParams, ImageCall
from candle.raycluster import error_line
from deployments.embeddings import EmbedCall
from deployments.gateway import GatewaySettings, generation_params, image_call

RowId = str | int
Work = EmbedCall | ChatCall | CompletionCall | ImageCall
# What one row's work gives back: vectors, a whole answer, or PNG images.
Result = tuple[np.ndarray, int] | AssistantMessage | list[bytes]

MAX_IMAGE_BYTES = GatewaySettings().max_body_bytes  # one data URL's bytes: what the gateway takes by default
PNG_KEY = "png"  # a record's base64 PNG, which the driver writes to a file and replaces by its path


class RowError(ValueError):
    """A row the job cannot run: its one-line reason goes to the errors file."""


class Row(BaseModel):
    # An integer id must fit the 64 bits that Parquet's id column and the JSON writer hold.
    id: str | Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


def read_row(text: str) -> tuple[RowId | None, dict[str, Any] | RowError]:
    """The row's id (None where it has no valid one) and the row, or why it is no row."""
    try:
        row = json.loads(text)
    except ValueError:
        return None, RowError("the row is not JSON")
    if not isinstance(row, dict):
        return None, RowError("the row is not a JSON object")
    try:
        return Row.model_validate(row).id, row
    except ValidationError:
        return None, RowError("the row has no 'id' (a string or a 64-bit integer)")


def id_key(text: str) -> str:
    """A row's identity across runs, as the output and errors files hold it: its id as JSON text
    (``null`` for every row without a valid id, whose error is then recorded once)."""
    return json.dumps(read_row(text)[0])


def parse(spec: ModelSpec, text: str) -> tuple[RowId | None, Work | Exception]:
    """The row's id and its call, or why it cannot be run."""
    row_id, row = read_row(text)
    if isinstance(row, RowError):
        return row_id, row
    body = {key: value for key, value in row.items() if key != "id"} | {"model": spec.name}
    try:
        return row_id, work(spec, body)
    except Exception as e:
        return row_id, e


def work(spec: ModelSpec, body: dict[str, Any]) -> Work:
    """The call a replica of ``spec`` runs for one row's ``body``, checked as the gateway checks it."""
    if spec.capability in ("text-embedding", "image-embedding"):
        return embed_call(spec, EmbeddingRequest.model_validate(body))
    if spec.capability == "text-to-image":
        return image(spec, ImageGenerationRequest.model_validate(body))
    if "messages" in body or spec.capability == "vision":
        chat = ChatCompletionRequest.model_validate(body)
        check_input_chars(chat.input_chars(), spec.limits.max_input_chars, "messages")
        messages, images = conversation(chat, spec)
        tools, tool_choice = chat.tool_request()
        return ChatCall(messages, sampling(chat, spec), tools, tool_choice, images)
    completion = CompletionRequest.model_validate(body)
    if not isinstance(completion.prompt, str):
        raise RowError("'prompt' must be one string per row")
    check_input_chars(len(completion.prompt), spec.limits.max_input_chars, "prompt")
    return CompletionCall(completion.prompt, sampling(completion, spec))


def embed_call(spec: ModelSpec, body: EmbeddingRequest) -> EmbedCall:
    if not isinstance(body.input, str):
        raise RowError("'input' must be one string per row")
    item: str | bytes = body.input
    if spec.capability == "image-embedding" and is_image_reference(body.input):
        item = image_bytes(body.input, "input", spec)
    else:
        check_input_chars(len(body.input), spec.limits.max_input_chars, "input")
    return EmbedCall((item,), body.input_type, body.dimensions)


def image(spec: ModelSpec, body: ImageGenerationRequest) -> ImageCall:
    if body.n != 1:
        raise RowError("'n' must be 1: one image per row")
    return image_call(body, spec)


def sampling(body: ChatCompletionRequest | CompletionRequest, spec: ModelSpec) -> GenerationParams:
    if body.n != 1:
        raise RowError("'n' must be 1: one answer per row")
    return generation_params(body, body.token_budget, spec)


def conversation(body: ChatCompletionRequest, spec: ModelSpec) -> tuple[list[dict[str, Any]], tuple[bytes, ...]]:
    """Messages for the chat template (as the gateway makes them) and the images' bytes."""
    found = template_conversation(body, spec)
    return found.messages, tuple(image_bytes(image.url, image.param, spec) for image in found.images)


def image_bytes(url: str, param: str, spec: ModelSpec) -> bytes:
    """A data URL's image, checked like the gateway's (remote URLs are refused: a batch reads no web)."""
    return load_image_bytes(
        url, param=param, max_pixels=spec.limits.max_image_pixels, max_bytes=MAX_IMAGE_BYTES, allow_remote=False
    )


def success_record(row_id: RowId, result: Result) -> str:
    if isinstance(result, AssistantMessage):
        message = result.as_dict()
        fields: dict[str, Any] = {"text": result.text, "finish_reason": result.finish_reason}
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
