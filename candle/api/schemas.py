"""OpenAI request bodies (validated with pydantic) and the response shapes candle returns.

Requests accept the fields OpenAI SDKs send; unknown fields are ignored, as OpenAI-compatible
servers do, so newer SDKs keep working. Responses are plain dicts in OpenAI's shape.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from candle.catalog.schema import MAX_INPUT_ITEMS
from candle.contracts import ResponseFormat

from .limits import unencodable_text
from .unsupported import CHAT, COMPLETIONS, RERANK, refuse_unsupported

# OpenAI's limit on stop sequences; their length is ours (each one is searched in every decoded piece).
MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 256
# Items of the lists a request may hold (prompts and embedding inputs: MAX_INPUT_ITEMS, OpenAI's
# 2,048). OpenAI's own caps where it has them (128 tools), generous ones elsewhere: what a chat
# template renders grows with each message (3.8 s per 100k messages on a tiny model).
MAX_MESSAGES = 2048
MAX_CONTENT_PARTS = 256
MAX_TOOLS = 128
MAX_TOOL_CALLS = 128
# Seeds reach torch.manual_seed / torch.Generator (and vLLM, which bounds them the same way): 64-bit signed.
Seed = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]


def at_most(limit: int) -> BeforeValidator:
    """A field's list (if it is one) of at most ``limit`` items, counted before any item is validated:
    pydantic's ``max_length`` counts only after building every item, 2M of them in a 32 MiB body."""

    def count(value: Any) -> Any:
        if isinstance(value, list) and len(value) > limit:
            raise PydanticCustomError(
                "too_long", "at most {limit} items are allowed here, got {count}", {"limit": limit, "count": len(value)}
            )
        return value

    return BeforeValidator(count)


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        if path := unencodable_text(data):
            raise PydanticCustomError(
                "unencodable_text",
                "text at '{param}' is not valid Unicode (it has a lone surrogate)",
                {"param": path},
            )
        return data


# -- chat and completions --------------------------------------------------------------------


class ImageURL(BaseModel):
    url: str
    detail: str | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | None = None


class CalledFunction(BaseModel):
    name: str
    # A JSON string as the SDKs send it (an object is accepted too, as vLLM does).
    arguments: str | dict[str, Any] | None = None

    def template_arguments(self) -> dict[str, Any]:
        """The arguments as the object chat templates iterate. Broken or non-object arguments (a model
        cut off mid-call) become no arguments, as vLLM renders them: they stay in the history of every
        later turn, and refusing them would end the conversation."""
        if isinstance(self.arguments, dict):
            return self.arguments
        try:
            parsed = json.loads(self.arguments or "{}")
        except json.JSONDecodeError:
            return {}
        return parsed if isinstance(parsed, dict) else {}


class RequestToolCall(BaseModel):
    """A tool call of an earlier assistant turn, sent back in ``messages``."""

    id: str | None = None
    type: Literal["function"] = "function"
    function: CalledFunction

    def for_template(self) -> dict[str, Any]:
        function = {"name": self.function.name, "arguments": self.function.template_arguments()}
        return {"id": self.id, "type": self.type, "function": function}

    def input_chars(self) -> int:
        """Characters as sent, counted before any is parsed (broken arguments count, though dropped)."""
        arguments = self.function.arguments
        sent = arguments if isinstance(arguments, str) else json.dumps(arguments or {}, ensure_ascii=False)
        return len(self.id or "") + len(self.function.name) + len(sent)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[
        str | Annotated[list[ContentPart], Field(max_length=MAX_CONTENT_PARTS)] | None, at_most(MAX_CONTENT_PARTS)
    ] = None
    name: str | None = None
    tool_calls: Annotated[list[RequestToolCall] | None, Field(max_length=MAX_TOOL_CALLS), at_most(MAX_TOOL_CALLS)] = (
        None
    )
    tool_call_id: str | None = None

    def text(self) -> str:
        """The message's text parts joined (images are handled by the vision path)."""
        if isinstance(self.content, str) or self.content is None:
            return self.content or ""
        return "".join(part.text or "" for part in self.content if part.type == "text")

    def input_chars(self) -> int:
        """Characters the chat template renders from this message: text, name, tool calls and their id."""
        calls = sum(call.input_chars() for call in self.tool_calls or ())
        return len(self.text()) + len(self.name or "") + len(self.tool_call_id or "") + calls

    def template_fields(self) -> dict[str, Any]:
        """``name``, ``tool_calls`` and ``tool_call_id`` as chat templates read them, where set."""
        fields: dict[str, Any] = {"name": self.name, "tool_call_id": self.tool_call_id}
        if self.tool_calls:
            fields["tool_calls"] = [call.for_template() for call in self.tool_calls]
        return {key: value for key, value in fields.items() if value is not None}

    def image_urls(self) -> list[str]:
        if not isinstance(self.content, list):
            return []
        return [part.image_url.url for part in self.content if part.type == "image_url" and part.image_url]


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class TextFormat(BaseModel):
    type: Literal["text"]


class JSONObjectFormat(BaseModel):
    type: Literal["json_object"]


class JSONSchemaSpec(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule
    description: str | None = None
    json_schema: dict[str, Any] = Field(alias="schema")
    strict: StrictBool | None = None


class JSONSchemaFormat(BaseModel):
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


AnyResponseFormat = Annotated[TextFormat | JSONObjectFormat | JSONSchemaFormat, Field(discriminator="type")]


class SamplingFields(BaseModel):
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: StrictFloat = Field(default=1.0, ge=0.0, le=2.0)
    top_p: StrictFloat = Field(default=1.0, gt=0.0, le=1.0)
    n: StrictInt = Field(default=1, ge=1)
    stop: Annotated[
        str | list[str] | None,
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "maxLength": MAX_STOP_CHARS},
                    {
                        "type": "array",
                        "items": {"type": "string", "maxLength": MAX_STOP_CHARS},
                        "maxItems": MAX_STOP_STRINGS,
                    },
                    {"type": "null"},
                ]
            }
        ),
    ] = None
    seed: Seed | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    response_format: AnyResponseFormat | None = None

    def output_schemas(self) -> list[tuple[str, dict[str, Any]]]:
        """The JSON schemas an engine compiles into grammars for this request, by where they are in it."""
        fmt = self.response_format
        return [("response_format", fmt.json_schema.json_schema)] if isinstance(fmt, JSONSchemaFormat) else []

    def output_format(self) -> ResponseFormat:
        """``response_format`` as the engines take it (the schema serialized, compiled by each backend)."""
        fmt = self.response_format
        if isinstance(fmt, JSONSchemaFormat):
            spec = fmt.json_schema
            return ResponseFormat("json_schema", json.dumps(spec.json_schema), spec.name, spec.strict)
        return ResponseFormat("json_object") if isinstance(fmt, JSONObjectFormat) else ResponseFormat()

    @field_validator("stop")
    @classmethod
    def _bounded_stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"stop must have at most {MAX_STOP_STRINGS} strings, got {len(stops)}")
        if longest := max((len(s) for s in stops if len(s) > MAX_STOP_CHARS), default=0):
            raise ValueError(f"stop strings must be at most {MAX_STOP_CHARS} characters, got one of {longest}")
        return stop

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class FunctionDefinition(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")  # OpenAI's rule (plus . and :, which vLLM allows)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: FunctionName


class ChatCompletionRequest(Request, SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES), at_most(MAX_MESSAGES)]
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    tools: Annotated[list[Tool] | None, Field(max_length=MAX_TOOLS), at_most(MAX_TOOLS)] = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None

    @model_validator(mode="before")
    @classmethod
    def _supported(cls, data: Any) -> Any:
        refuse_unsupported(data, CHAT)
        return data

    @property
    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def input_chars(self) -> int:
        """Characters the model reads: every message, and the tool definitions rendered as JSON."""
        tools = sum(
            len(json.dumps(tool.model_dump(exclude_none=True), ensure_ascii=False)) for tool in self.tools or ()
        )
        return sum(message.input_chars() for message in self.messages) + tools

    @model_validator(mode="after")
    def _tool_choice_names_a_tool(self) -> ChatCompletionRequest:
        if self.tool_choice not in (None, "none") and not self.tools:
            raise ValueError("tool_choice needs tools")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = [tool.function.name for tool in self.tools or ()]
            if self.tool_choice.function.name not in names:
                raise ValueError(f"tool_choice names {self.tool_choice.function.name!r}, which is not in tools")
        return self

    def output_schemas(self) -> list[tuple[str, dict[str, Any]]]:
        """Also the parameters of the tools whose calls vLLM constrains: ``strict`` functions, and the
        tools a ``tool_choice`` of "required" or a named function forces (none with "none")."""
        schemas = super().output_schemas()
        if self.tool_choice == "none":
            return schemas
        named = self.tool_choice.function.name if isinstance(self.tool_choice, NamedToolChoice) else None
        for index, tool in enumerate(self.tools or ()):
            function = tool.function
            if function.parameters and (function.strict or self.tool_choice == "required" or function.name == named):
                schemas.append((f"tools[{index}].function.parameters", function.parameters))
        return schemas

    def tool_request(self) -> tuple[list[dict[str, Any]] | None, str | dict[str, Any] | None]:
        """The tools the model sees (none with tool_choice "none", as OpenAI does) and the choice, as plain dicts."""
        if not self.tools or self.tool_choice == "none":
            return None, None
        choice = self.tool_choice.model_dump() if isinstance(self.tool_choice, NamedToolChoice) else self.tool_choice
        return [tool.model_dump(exclude_none=True) for tool in self.tools], choice


Prompt = Annotated[str, Field(min_length=1)]  # an empty prompt gives a model nothing to continue from


class CompletionRequest(Request, SamplingFields):
    prompt: Annotated[Prompt | Annotated[list[Prompt], Field(max_length=MAX_INPUT_ITEMS)], at_most(MAX_INPUT_ITEMS)] = (
        Field(min_length=1)
    )

    @model_validator(mode="before")
    @classmethod
    def _supported(cls, data: Any) -> Any:
        refuse_unsupported(data, COMPLETIONS)
        return data

    @property
    def token_budget(self) -> int | None:
        return self.max_tokens

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def input_chars(self) -> int:
        return sum(len(prompt) for prompt in self.prompts())


# -- embeddings and images -------------------------------------------------------------------


class EmbeddingRequest(Request):
    input: Annotated[str | Annotated[list[str], Field(max_length=MAX_INPUT_ITEMS)], at_most(MAX_INPUT_ITEMS)]
    dimensions: StrictInt | None = Field(default=None, ge=1)
    encoding_format: Literal["float", "base64"] = "float"
    # candle extension: which catalog prompt to prepend (e.g. "query"); documents get none.
    input_type: str | None = None

    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("input must not be empty")
        return value


class ImageGenerationRequest(Request):
    prompt: str = Field(min_length=1)
    n: StrictInt = Field(default=1, ge=1)
    size: str | None = None
    response_format: Literal["b64_json", "url"] = "b64_json"
    seed: Seed | None = None  # candle extension, for reproducible images
    num_inference_steps: StrictInt | None = Field(default=None, ge=1, le=100)  # candle extension
    guidance_scale: StrictFloat | None = Field(default=None, ge=0.0, le=30.0)  # candle extension

    def dimensions(self, default: tuple[int, int]) -> tuple[int, int]:
        """``size`` as (width, height); "WxH" with positive integers."""
        if self.size is None or self.size == "auto":
            return default
        width, sep, height = self.size.lower().partition("x")
        if not sep or not width.isdigit() or not height.isdigit() or int(width) < 1 or int(height) < 1:
            raise ValueError(f"size must look like '1024x1024', got {self.size!r}")
        return int(width), int(height)


# -- rerank and score --------------------------------------------------------------------------


class RerankDocument(BaseModel):
    """A document as an object (Cohere's and Jina's other form): its ``text`` is what is ranked."""

    model_config = ConfigDict(extra="ignore")

    text: str


Query = Annotated[str, Field(min_length=1)]  # an empty query ranks nothing


class RerankRequest(Request):
    """Cohere's and Jina's rerank body (``/v1/rerank``, ``/v2/rerank``, ``/rerank``)."""

    query: Query
    documents: Annotated[
        Annotated[list[str | RerankDocument], Field(min_length=1, max_length=MAX_INPUT_ITEMS)],
        at_most(MAX_INPUT_ITEMS),
    ]
    top_n: StrictInt | None = Field(default=None, ge=1)  # None: every document; more than there are: every one
    return_documents: StrictBool = False  # Cohere's default; Jina's clients send true
    max_tokens_per_doc: StrictInt | None = Field(default=None, ge=1)  # Cohere v2's truncation, per document
    # candle extension: which catalog prompt to apply (an LLM reranker's instruction); none: the model's default.
    prompt_name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _supported(cls, data: Any) -> Any:
        refuse_unsupported(data, RERANK)
        return data

    def texts(self) -> list[str]:
        return [document if isinstance(document, str) else document.text for document in self.documents]


Texts = Annotated[str | Annotated[list[str], Field(min_length=1, max_length=MAX_INPUT_ITEMS)], at_most(MAX_INPUT_ITEMS)]


class ScoreRequest(Request):
    """vLLM's score body (``/v1/score``): ``text_1`` against ``text_2``, one to one, one to many or
    pairwise (lists of one length)."""

    text_1: Texts
    text_2: Texts
    max_tokens_per_doc: StrictInt | None = Field(default=None, ge=1)  # candle extension: cuts each text_2
    prompt_name: str | None = None  # candle extension, as on rerank

    @model_validator(mode="after")
    def _pairable(self) -> ScoreRequest:
        firsts, seconds = self.firsts(), self.seconds()
        if len(firsts) > 1 and len(firsts) != len(seconds):
            raise ValueError(
                f"text_1 has {len(firsts)} texts and text_2 {len(seconds)}: send one text_1, or as many as text_2"
            )
        return self

    def firsts(self) -> list[str]:
        return [self.text_1] if isinstance(self.text_1, str) else list(self.text_1)

    def seconds(self) -> list[str]:
        return [self.text_2] if isinstance(self.text_2, str) else list(self.text_2)


# -- responses -------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error body, as every non-2xx answer carries it (documented in the OpenAPI schema)."""

    error: ErrorDetail


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int = 0) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def now() -> int:
    return int(time.time())
