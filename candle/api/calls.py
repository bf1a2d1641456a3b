"""Requests become engine calls: an OpenAI request body and its model's catalog entry in, the typed
call a replica runs (``candle.contracts``) out, checked against the entry's limits on the way.

The gateway builds every call here and so does the batch job, so a batch row is refused for exactly
what the HTTP API refuses and reaches the replica as the same call. What differs between the two is
only where images may come from (``ImageAccess``): the gateway's settings, or data URLs alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from candle.catalog import ModelSpec
from candle.contracts import ChatCall, CompletionCall, EmbedCall, GenerationParams, ImageCall, RerankCall

from .conversation import template_conversation
from .errors import bad_request
from .image_urls import ImageReference, is_image_reference, load_images
from .limits import check_input_chars, sampling_temperature
from .remote_fetch import IPNetwork
from .schema_limits import check_schemas
from .schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ImageGenerationRequest,
    RerankRequest,
    SamplingFields,
    ScoreRequest,
)

DEFAULT_MAX_TOKENS = 256
DEFAULT_IMAGE_SIZE = 1024


@dataclass(frozen=True)
class ImageAccess:
    """Where a request's images may come from, and how many bytes one may have."""

    max_bytes: int
    allow_remote: bool = False
    allowed_networks: Sequence[IPNetwork] = ()

    async def read(self, images: Sequence[ImageReference], spec: ModelSpec) -> list[bytes]:
        """A request's images, fetched under one deadline. Fetching and decoding block: in threads, so
        the event loop keeps serving other requests."""
        return await asyncio.to_thread(
            load_images,
            list(images),
            max_pixels=spec.limits.max_image_pixels,
            max_bytes=self.max_bytes,
            allow_remote=self.allow_remote,
            allowed_networks=self.allowed_networks,
        )


def generation_params(body: SamplingFields, budget: int | None, spec: ModelSpec) -> GenerationParams:
    """The sampling fields as engines take them, within the model's limits."""
    limits = spec.limits
    max_tokens = budget or int(spec.defaults.get("max_tokens", DEFAULT_MAX_TOKENS))
    if max_tokens > limits.max_tokens:
        raise bad_request(f"max_tokens must be at most {limits.max_tokens}, got {max_tokens}", "max_tokens")
    if body.n > limits.max_n:
        raise bad_request(f"n must be at most {limits.max_n}, got {body.n}", "n")
    check_schemas(body.output_schemas(), limits)  # before any engine, vLLM's too, compiles one
    return GenerationParams(
        max_tokens=max_tokens,
        temperature=sampling_temperature(body.temperature),
        top_p=body.top_p,
        stop=tuple(body.stop_list()),
        seed=body.seed,
        response_format=body.output_format(),
        max_tokens_requested=budget is not None,
    )


async def chat_call(body: ChatCompletionRequest, spec: ModelSpec, images: ImageAccess) -> ChatCall:
    """One chat turn; its images are read only once everything else passed."""
    check_input_chars(body.input_chars(), spec.limits.max_input_chars, "messages")
    params = generation_params(body, body.token_budget, spec)
    conversation = template_conversation(body, spec)
    data = await images.read(conversation.images, spec)
    tools, tool_choice = body.tool_request()
    return ChatCall(conversation.messages, params, tools, tool_choice, tuple(data))


def completion_calls(body: CompletionRequest, spec: ModelSpec) -> list[CompletionCall]:
    """One call per answer: each prompt ``n`` times, in OpenAI's order of choices."""
    params = generation_params(body, body.token_budget, spec)
    prompts = body.prompts()
    if len(prompts) > spec.limits.max_input_items:
        raise bad_request(f"prompt must have at most {spec.limits.max_input_items} items", "prompt")
    check_input_chars(body.input_chars(), spec.limits.max_input_chars, "prompt")
    return [CompletionCall(prompt, params) for prompt in prompts for _ in range(body.n)]


async def embed_call(body: EmbeddingRequest, spec: ModelSpec, images: ImageAccess) -> EmbedCall:
    """The inputs in order: texts as sent, and, for image-embedding models, images as checked bytes."""
    inputs = body.inputs()
    limits = spec.limits
    if len(inputs) > limits.max_input_items:
        raise bad_request(f"input must have at most {limits.max_input_items} items, got {len(inputs)}", "input")
    text = [i for i in inputs if spec.capability == "text-embedding" or not is_image_reference(i)]
    check_input_chars(sum(len(i) for i in text), limits.max_input_chars, "input")
    items: list[str | bytes] = list(inputs)
    if spec.capability == "image-embedding":
        if sum(is_image_reference(i) for i in inputs) > limits.max_images_per_request:
            raise bad_request(f"at most {limits.max_images_per_request} images per request", "input")
        references = [ImageReference(i, f"input[{n}]") for n, i in enumerate(inputs) if is_image_reference(i)]
        loaded = iter(await images.read(references, spec))
        items = [next(loaded) if is_image_reference(i) else i for i in inputs]
    return EmbedCall(tuple(items), body.input_type, body.dimensions)


def rerank_call(body: RerankRequest, spec: ModelSpec) -> RerankCall:
    """The documents against the query, checked against the model's limits before any is scored."""
    documents = body.texts()
    _check_pairs(len(documents), len(body.query) * len(documents) + sum(map(len, documents)), "documents", spec)
    return RerankCall(body.query, tuple(documents), body.prompt_name, _cut(body.max_tokens_per_doc, spec))


def score_calls(body: ScoreRequest, spec: ModelSpec) -> list[RerankCall]:
    """One call for one ``text_1`` against every ``text_2``; for pairwise lists, a call per pair."""
    firsts, seconds = body.firsts(), body.seconds()
    queries = firsts * len(seconds) if len(firsts) == 1 else firsts
    _check_pairs(len(seconds), sum(map(len, queries)) + sum(map(len, seconds)), "text_2", spec)
    cut = _cut(body.max_tokens_per_doc, spec)
    if len(firsts) == 1:
        return [RerankCall(firsts[0], tuple(seconds), body.prompt_name, cut)]
    return [RerankCall(query, (text,), body.prompt_name, cut) for query, text in zip(firsts, seconds, strict=True)]


def _check_pairs(pairs: int, chars: int, param: str, spec: ModelSpec) -> None:
    """The model's limits over the pairs it scores, counted as it reads them: the query once per document."""
    if pairs > spec.limits.max_input_items:
        raise bad_request(f"{param} must have at most {spec.limits.max_input_items} items, got {pairs}", param)
    check_input_chars(chars, spec.limits.max_input_chars, param)


def _cut(requested: int | None, spec: ModelSpec) -> int | None:
    """Tokens to keep of each document: the request's, else the entry's default, else the model's limit."""
    return requested or spec.defaults.get("max_tokens_per_doc")


def image_call(body: ImageGenerationRequest, spec: ModelSpec) -> ImageCall:
    """``n`` pictures of the requested size, within the model's limits."""
    check_input_chars(len(body.prompt), spec.limits.max_input_chars, "prompt")
    if body.n > spec.limits.max_n:
        raise bad_request(f"n must be at most {spec.limits.max_n}, got {body.n}", "n")
    default = int(spec.defaults.get("size", DEFAULT_IMAGE_SIZE))
    try:
        width, height = body.dimensions((default, default))
    except ValueError as e:
        raise bad_request(str(e), "size") from None
    if width * height > spec.limits.max_image_pixels:
        raise bad_request(f"size {width}x{height} exceeds {spec.limits.max_image_pixels} pixels", "size")
    return ImageCall(
        body.prompt,
        width,
        height,
        n=body.n,
        seed=body.seed,
        num_inference_steps=body.num_inference_steps,
        guidance_scale=body.guidance_scale,
    )
