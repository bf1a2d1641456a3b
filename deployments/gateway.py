"""The OpenAI-compatible gateway: one base URL, routed by ``model`` to each model's deployment.

It validates and bounds every request before a model sees it (OpenAI error shapes throughout),
refuses requests to models that are not ready with 503 + progress + ``Retry-After`` instead of
letting them queue behind a download (but lets a request wake a model scaled to zero, waiting a
bounded time for its replica), and answers chat and completions whole or as SSE. The routes
and readiness live here; what must be decided before a body is parsed (API keys, body size, the
request deadline) is in ``guards``, the OpenAI shape of every error in ``http_errors``, and how a
replica's chunks become answers and events in ``streaming``.

(No ``from __future__ import annotations`` here: FastAPI must see real types, e.g. ``Request``,
on the routes that ``serve.ingress`` rewraps.)
"""

import asyncio
import logging
import os
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import FastAPI
from pydantic import BaseModel, Field, IPvAnyNetwork
from ray import serve
from ray.serve.handle import DeploymentHandle

from candle.api import responses
from candle.api.conversation import template_conversation
from candle.api.errors import APIError, bad_request, model_not_found, wrong_capability
from candle.api.images import is_image_reference, load_image_bytes
from candle.api.limits import check_input_chars, sampling_temperature
from candle.api.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ImageGenerationRequest,
    SamplingFields,
    new_id,
)
from candle.catalog import ModelSpec
from candle.catalog.capabilities import REGISTRY, capabilities_for
from candle.contracts import ChatCall, CompletionCall, GenerationParams, ImageCall
from candle.download.factory import downloader_factory

from . import guards, http_errors, streaming
from .http_errors import ERRORS
from .model_status import ModelStatus, collect

logger = logging.getLogger("ray.serve")

STATUS_REFRESH_S = 1.0
COLD_START_POLL_S = 0.1
# States in which a model that may scale to zero takes requests: Serve queues them and starts a replica.
WAKING_STATES = ("idle", "downloading", "loading")
T = TypeVar("T")
DEFAULT_MAX_TOKENS = 256
DEFAULT_IMAGE_SIZE = 1024


class GatewaySettings(BaseModel):
    """The gateway's own options (``args.gateway`` in the Serve config)."""

    api_keys_env: str = "CANDLE_API_KEYS"  # env var of comma-separated keys (preferred: keeps keys out of configs)
    api_keys: list[str] = Field(default_factory=list, repr=False)  # more keys, from the Serve config
    allow_remote_images: bool = False
    # Non-public networks remote images may come from anyway (an internal image store); never metadata.
    remote_image_allowed_networks: list[IPvAnyNetwork] = Field(default_factory=list)
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    retry_after_s: int = 5
    # Every request ends by then (503, or an error event in a started stream), and its model call is cancelled.
    request_timeout_s: float = Field(default=300.0, gt=0)


app = FastAPI(title="candle", description="OpenAI-compatible API for models served by candle on Ray Serve.")
http_errors.install(app)


def generation_params(body: SamplingFields, budget: int | None, spec: ModelSpec) -> GenerationParams:
    """The sampling fields as engines take them, within the model's limits (the batch job uses it too)."""
    limits = spec.limits
    max_tokens = budget or int(spec.defaults.get("max_tokens", DEFAULT_MAX_TOKENS))
    if max_tokens > limits.max_tokens:
        raise bad_request(f"max_tokens must be at most {limits.max_tokens}, got {max_tokens}", "max_tokens")
    if body.n > limits.max_n:
        raise bad_request(f"n must be at most {limits.max_n}, got {body.n}", "n")
    return GenerationParams(
        max_tokens=max_tokens,
        temperature=sampling_temperature(body.temperature),
        top_p=body.top_p,
        stop=tuple(body.stop_list()),
        seed=body.seed,
        response_format=body.output_format(),
        max_tokens_requested=budget is not None,
    )


def image_call(body: ImageGenerationRequest, spec: ModelSpec) -> ImageCall:
    """The request as the engines take it, within the model's limits (the batch job uses it too)."""
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


# Module-level helpers stay above the class: Serve ships the class by value, with the globals
# that exist when it is decorated.
@serve.deployment
@serve.ingress(app)
class Gateway:
    async def __init__(self, models: list[dict[str, Any]], settings: dict[str, Any] | None = None) -> None:
        self.specs = {m.name: m for m in (ModelSpec.model_validate(raw) for raw in models)}
        self.settings = GatewaySettings.model_validate(settings or {})
        keys = os.environ.get(self.settings.api_keys_env, "").split(",") + self.settings.api_keys
        guards.install(
            app,
            max_body_bytes=self.settings.max_body_bytes,
            api_keys=[k.strip() for k in keys if k.strip()],
            deadline_s=self.settings.request_timeout_s,
            retry_after_s=self.settings.retry_after_s,
        )
        self.handles: dict[str, DeploymentHandle] = {
            name: serve.get_deployment_handle(REGISTRY[spec.capability].deployment, app_name=name)
            for name, spec in self.specs.items()
        }
        self.status: dict[str, ModelStatus] = {}
        # The gateway runs in the base env: it brings up the downloader factory that replicas under a
        # model's own runtime_env wait for (they may not create it themselves).
        await asyncio.to_thread(downloader_factory)
        self._refresher = asyncio.create_task(self._refresh_status())

    async def _refresh_status(self) -> None:
        names = {name: REGISTRY[spec.capability].deployment for name, spec in self.specs.items()}
        while True:
            try:
                self.status = await collect(self.specs, names)
            except Exception:
                logger.exception("refreshing model status failed")
            await asyncio.sleep(STATUS_REFRESH_S)

    # -- guards --------------------------------------------------------------------------------

    def _status(self, name: str) -> ModelStatus:
        """The last collected status; before the first collection, the model is starting up."""
        return self.status.get(name, ModelStatus("loading", "starting up"))

    def _model(self, name: str, endpoint: str) -> ModelSpec:
        """The ready model named ``name`` that can serve ``endpoint``, or the right error."""
        spec = self.specs.get(name)
        if spec is None:
            raise model_not_found(name)
        if spec.capability not in capabilities_for(endpoint):
            raise wrong_capability(name, spec.capability, endpoint)
        status = self._status(name)
        wakes = spec.scales_to_zero() and status.state in WAKING_STATES
        if status.state != "ready" and not wakes:
            raise self._unavailable(name, status, f": {status.reason}" if status.reason else "; retry later.")
        return spec

    def _unavailable(self, name: str, status: ModelStatus, why: str) -> APIError:
        """503 with the model's status and a ``Retry-After`` from its download's ETA, if one is known."""
        eta = status.progress.eta_s if status.progress else None
        retry = min(max(float(eta), 1.0), 60.0) if eta else float(self.settings.retry_after_s)
        return APIError(
            503,
            f"The model `{name}` is {status.state.replace('_', ' ')}{why}",
            type="service_unavailable",
            code="model_failed" if status.state == "failed" else "model_not_ready",
            retry_after=retry,
            extra={"model_status": status.as_dict()},
        )

    async def _answer(self, spec: ModelSpec, answer: Awaitable[T]) -> T:
        """``answer`` from the model; while it has no running replica (woken from zero, Serve holds the
        request until one starts) bounded by ``cold_start_timeout_s``: past it the call is cancelled
        and the client gets a 503 with ``Retry-After``. Once a replica runs, ``answer`` takes its time."""
        if self._status(spec.name).state == "ready":
            return await answer
        task = asyncio.ensure_future(answer)
        running = asyncio.ensure_future(self._running(spec.name))
        timeout = spec.limits.cold_start_timeout_s
        try:
            await asyncio.wait({task, running}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if task.done() or running.done():
                return await task
        except BaseException:
            task.cancel()
            raise
        finally:
            running.cancel()
        task.cancel()
        status = self._status(spec.name)
        raise self._unavailable(spec.name, status, f"; no replica started within {timeout:g}s, retry later.")

    async def _running(self, name: str) -> None:
        while self._status(name).state != "ready":
            await asyncio.sleep(COLD_START_POLL_S)

    # -- routes --------------------------------------------------------------------------------

    @app.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models", responses=ERRORS)
    async def list_models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._model_card(name) for name in self.specs]}

    @app.get("/v1/models/{name:path}", responses=ERRORS)
    async def get_model(self, name: str) -> dict[str, Any]:
        if name not in self.specs:
            raise model_not_found(name)
        return self._model_card(name)

    def _model_card(self, name: str) -> dict[str, Any]:
        spec = self.specs[name]
        status = self._status(name)
        return {
            "id": name,
            "object": "model",
            "created": 0,
            "owned_by": spec.repo_id.split("/")[0],
            "capability": spec.capability,
            "repo_id": spec.repo_id,
            "status": status.as_dict(),
        }

    @app.post("/v1/chat/completions", responses=ERRORS)
    async def chat_completions(self, body: ChatCompletionRequest) -> Any:
        spec = self._model(body.model, "/v1/chat/completions")
        check_input_chars(body.input_chars(), spec.limits.max_input_chars, "messages")
        params = generation_params(body, body.token_budget, spec)
        messages, images = await self._conversation(body, spec)
        tools, tool_choice = body.tool_request()
        handle = self.handles[spec.name].options(stream=True)

        call = ChatCall(messages, params, tools, tool_choice, tuple(images))

        def run() -> Any:
            return handle.chat.remote(call)

        completion_id = new_id("chatcmpl")
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            started = await self._answer(spec, streaming.started(run))
            return streaming.sse(streaming.chat_events(started, body.n, completion_id, spec.name, include_usage))
        choices, prompt_tokens, completion_tokens = await self._answer(spec, streaming.collect(run, body.n))
        return responses.chat_completion(completion_id, spec.name, choices, prompt_tokens, completion_tokens)

    @app.post("/v1/completions", responses=ERRORS)
    async def completions(self, body: CompletionRequest) -> Any:
        spec = self._model(body.model, "/v1/completions")
        params = generation_params(body, body.token_budget, spec)
        prompts = body.prompts()
        if len(prompts) > spec.limits.max_input_items:
            raise bad_request(f"prompt must have at most {spec.limits.max_input_items} items", "prompt")
        check_input_chars(body.input_chars(), spec.limits.max_input_chars, "prompt")
        handle = self.handles[spec.name].options(stream=True)
        runs = [(lambda p=p: handle.complete.remote(CompletionCall(p, params))) for p in prompts for _ in range(body.n)]
        completion_id = new_id("cmpl")
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            runs[0] = await self._answer(spec, streaming.started(runs[0]))
            return streaming.sse(streaming.completion_events(runs, completion_id, spec.name, include_usage))
        # The first answer wakes a model scaled to zero; the rest find its replica running.
        (first,), prompt_tokens, completion_tokens = await self._answer(spec, streaming.collect(runs[0], 1))
        choices = [first]
        for run in runs[1:]:
            (choice,), p, c = await streaming.collect(run, 1)
            choices.append(choice)
            prompt_tokens, completion_tokens = prompt_tokens + p, completion_tokens + c
        return responses.text_completion(completion_id, spec.name, choices, prompt_tokens, completion_tokens)

    @app.post("/v1/embeddings", responses=ERRORS)
    async def embeddings(self, body: EmbeddingRequest) -> Any:
        spec = self._model(body.model, "/v1/embeddings")
        inputs = body.inputs()
        limits = spec.limits
        if len(inputs) > limits.max_input_items:
            raise bad_request(f"input must have at most {limits.max_input_items} items, got {len(inputs)}", "input")
        text = [i for i in inputs if spec.capability == "text-embedding" or not is_image_reference(i)]
        check_input_chars(sum(len(i) for i in text), limits.max_input_chars, "input")
        items: list[str | bytes] = list(inputs)
        if spec.capability == "image-embedding":
            images = [i for i in inputs if is_image_reference(i)]
            if len(images) > limits.max_images_per_request:
                raise bad_request(f"at most {limits.max_images_per_request} images per request", "input")
            items = [
                await self._image(i, f"input[{n}]", spec) if is_image_reference(i) else i for n, i in enumerate(inputs)
            ]
        vectors, tokens = await self._answer(
            spec, streaming.call(self.handles[spec.name].embed.remote(items, body.input_type, body.dimensions))
        )
        # A response object skips FastAPI's per-value jsonable_encoder walk, which dominates for vectors.
        return responses.FastJSONResponse(responses.embeddings(spec.name, vectors, tokens, body.encoding_format))

    @app.post("/v1/images/generations", responses=ERRORS)
    async def images_generations(self, body: ImageGenerationRequest) -> Any:
        spec = self._model(body.model, "/v1/images/generations")
        if body.response_format != "b64_json":
            raise bad_request("Only response_format 'b64_json' is supported.", "response_format")
        pngs = await self._answer(spec, streaming.call(self.handles[spec.name].generate.remote(image_call(body, spec))))
        return responses.FastJSONResponse(responses.images(pngs))

    # -- helpers -------------------------------------------------------------------------------

    async def _image(self, url: str, param: str, spec: ModelSpec) -> bytes:
        """Fetching and decoding block: in a thread, so the event loop keeps serving other requests."""
        return await asyncio.to_thread(
            load_image_bytes,
            url,
            param=param,
            max_pixels=spec.limits.max_image_pixels,
            max_bytes=self.settings.max_body_bytes,
            allow_remote=self.settings.allow_remote_images,
            allowed_networks=self.settings.remote_image_allowed_networks,
        )

    async def _conversation(
        self, body: ChatCompletionRequest, spec: ModelSpec
    ) -> tuple[list[dict[str, Any]], list[bytes]]:
        """Messages for the chat template and the images' bytes, read once the request passed every check."""
        conversation = template_conversation(body, spec)
        return conversation.messages, [await self._image(image.url, image.param, spec) for image in conversation.images]
