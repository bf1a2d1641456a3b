"""The OpenAI-compatible gateway: one base URL, routed by ``model`` to each model's deployment.

It validates and bounds every request before a model sees it (OpenAI error shapes throughout),
refuses requests to models that are not ready with 503 + progress + ``Retry-After`` instead of
letting them queue behind a download (but lets a request wake a model scaled to zero, or have a
pool replica load a pooled one, waiting a bounded time for it), and answers chat and completions
whole or as SSE. The routes and readiness live here; its settings and what must be decided before a
body is parsed (API keys, body size, the request deadline) in ``front`` and ``guards``, the OpenAI
shape of every error in ``http_errors``, how a replica's chunks become answers and events in
``streaming``, and which handle reaches a model in ``routing``.

(No ``from __future__ import annotations`` here: FastAPI must see real types, e.g. ``Request``,
on the routes that ``serve.ingress`` rewraps.)
"""

import asyncio
from collections.abc import Awaitable
from functools import partial
from typing import Any, TypeVar

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from candle.api import calls, responses
from candle.api.errors import APIError, bad_request, model_not_found, wrong_capability
from candle.api.models import ModelStatus, model_card
from candle.api.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ImageGenerationRequest,
    RerankRequest,
    ScoreRequest,
)
from candle.catalog import ModelSpec
from candle.catalog.capabilities import capabilities_for
from candle.download.cluster.factory import downloader_factory

from . import http_errors, metrics, streaming
from .coalescer import embedding_coalescer, rerank_coalescer
from .front import GatewaySettings, open_front
from .http_errors import ERRORS
from .model_status import collect
from .routing import model_handle
from .status_board import StatusBoard

COLD_START_POLL_S = 0.1
# States in which a model that may scale to zero, or a pooled one, takes requests: Serve queues them and
# starts a replica, or routes them to a pool replica that loads the model.
WAKING_STATES = ("idle", "downloading", "loading")
T = TypeVar("T")


app = FastAPI(title="candle", description="OpenAI-compatible API for models served by candle on Ray Serve.")
http_errors.install(app)


@serve.deployment
@serve.ingress(app)
class Gateway:
    async def __init__(self, models: list[dict[str, Any]], settings: dict[str, Any] | None = None) -> None:  # type: ignore[misc]  # an async constructor: Ray Serve awaits it
        self.settings = GatewaySettings.model_validate(settings or {})
        self.specs = {m.name: m for m in (ModelSpec.model_validate(raw) for raw in models)}
        self.images = open_front(app, self.settings, self.specs)
        self.handles: dict[str, DeploymentHandle] = {name: model_handle(spec) for name, spec in self.specs.items()}
        self.embedders = {
            name: embedding_coalescer(self.handles[name], spec)
            for name, spec in self.specs.items()
            if spec.capability in capabilities_for("/v1/embeddings")
        }
        self.rankers = {
            name: rerank_coalescer(self.handles[name], spec)
            for name, spec in self.specs.items()
            if spec.capability in capabilities_for("/v1/rerank")
        }
        self.board = StatusBoard(partial(collect, self.specs), partial(metrics.publish_status, self.specs))
        # The gateway runs in the base env: it brings up the downloader factory that replicas under a
        # model's own runtime_env wait for (they may not create it themselves).
        await asyncio.to_thread(downloader_factory)
        self._refresher = asyncio.create_task(self.board.run())

    # -- guards --------------------------------------------------------------------------------

    def _model(self, name: str, endpoint: str) -> ModelSpec:
        """The ready model named ``name`` that can serve ``endpoint``, or the right error."""
        spec = self.specs.get(name)
        if spec is None:
            raise model_not_found(name)
        metrics.attribute(spec)
        if spec.capability not in capabilities_for(endpoint):
            raise wrong_capability(name, spec.capability, endpoint)
        status = self.board.get(name)
        if status.state != "ready" and not self._wakes(spec, status):
            raise self._unavailable(name, status, f": {status.reason}" if status.reason else "; retry later.")
        return spec

    @staticmethod
    def _wakes(spec: ModelSpec, status: ModelStatus) -> bool:
        """Whether a request to a model not ready goes on: it wakes a model scaled to zero or has a pool
        replica load a pooled one; a pooled model whose last load failed is tried again (or refused with
        the reason) by the pool replica it failed on."""
        if status.state in WAKING_STATES:
            return spec.pool is not None or spec.scales_to_zero()
        return spec.pool is not None and status.state == "failed" and bool(status.replicas)

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
        request until one starts) or, pooled, is loaded on none, bounded by ``cold_start_timeout_s``:
        past it the call is cancelled and the client gets a 503 with ``Retry-After``. Once the model is
        ready (at a recent collection: ``StatusBoard.ready_now``), ``answer`` takes its time."""
        if self.board.ready_now(spec.name):
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
        status = self.board.get(spec.name)
        waited = "it did not load" if spec.pool else "no replica started"
        raise self._unavailable(spec.name, status, f"; {waited} within {timeout:g}s, retry later.")

    async def _running(self, name: str) -> None:
        while not self.board.ready_now(name):
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
        return model_card(self.specs[name], self.board.get(name))

    @app.post("/v1/chat/completions", responses=ERRORS)
    async def chat_completions(self, body: ChatCompletionRequest) -> Any:
        spec = self._model(body.model, "/v1/chat/completions")
        handle = self.handles[spec.name].options(stream=True)
        return await streaming.chat_answer(
            body, spec, self.images, partial(metrics.send, handle.chat), partial(self._answer, spec)
        )

    @app.post("/v1/completions", responses=ERRORS)
    async def completions(self, body: CompletionRequest) -> Any:
        spec = self._model(body.model, "/v1/completions")
        handle = self.handles[spec.name].options(stream=True)
        return await streaming.completion_answer(
            body, spec, partial(metrics.send, handle.complete), partial(self._answer, spec)
        )

    @app.post("/v1/embeddings", responses=ERRORS)
    async def embeddings(self, body: EmbeddingRequest) -> Any:
        spec = self._model(body.model, "/v1/embeddings")
        call = await calls.embed_call(body, spec, self.images)
        vectors, tokens = await self._answer(spec, streaming.call(self.embedders[spec.name](metrics.stamped(call))))
        # A response object skips FastAPI's per-value jsonable_encoder walk, which dominates for vectors.
        return responses.FastJSONResponse(responses.embeddings(spec.name, vectors, tokens, body.encoding_format))

    @app.post("/v1/images/generations", responses=ERRORS)
    async def images_generations(self, body: ImageGenerationRequest) -> Any:
        spec = self._model(body.model, "/v1/images/generations")
        if body.response_format != "b64_json":
            raise bad_request("Only response_format 'b64_json' is supported.", "response_format")
        call = calls.image_call(body, spec)
        pngs = await self._answer(spec, streaming.call(metrics.send(self.handles[spec.name].generate, call)))
        return responses.FastJSONResponse(responses.images(pngs))

    # Cohere's routes (v1 and v2: the SDK's Client and ClientV2, which LangChain's CohereRerank uses), and
    # the bare one Infinity, TEI and vLLM serve; one shape, a superset of each.
    @app.post("/v1/rerank", responses=ERRORS)
    @app.post("/v2/rerank", responses=ERRORS)
    @app.post("/rerank", responses=ERRORS)
    async def rerank(self, body: RerankRequest) -> Any:
        spec = self._model(body.model, "/v1/rerank")
        call = calls.rerank_call(body, spec)
        scores, tokens = await self._answer(spec, streaming.call(self.rankers[spec.name](metrics.stamped(call))))
        results = responses.ranking(call, scores, body.top_n, body.return_documents)
        return responses.FastJSONResponse(responses.rerank(spec.name, results, tokens))

    @app.post("/v1/score", responses=ERRORS)
    @app.post("/score", responses=ERRORS)
    async def score(self, body: ScoreRequest) -> Any:
        spec = self._model(body.model, "/v1/score")
        work = calls.score_calls(body, spec)
        if len(work) == 1:  # one text_1 against every text_2: a list with other requests' calls
            results = [await self._answer(spec, streaming.call(self.rankers[spec.name](work[0])))]
        else:  # pairwise: a call per pair, already one list
            results = await self._answer(spec, streaming.call(self.handles[spec.name].rerank_many.remote(work)))
            if failed := next((r for r in results if isinstance(r, Exception)), None):
                raise http_errors.client_error(failed)
        values = [float(score) for scores, _ in results for score in scores]
        return responses.FastJSONResponse(responses.scores(spec.name, values, sum(tokens for _, tokens in results)))
