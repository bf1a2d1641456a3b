"""A chat model's own base URL (``/models/NAME/v1``), answered by the model's replicas themselves.

Through the gateway a stream crosses two processes and a Serve call per request before the engine
sees it; on a busy node that costs the stream's first token and the engine its batch (measured:
benchmarks/results/peers.md). Here Serve's proxy (or HAProxy, on the fast path) hands the HTTP
request straight to a replica of the model, which validates it, runs it and frames the SSE itself,
as ``vllm serve`` does, behind the same guards, settings and metrics as the gateway. The gateway
still serves the model at ``/v1`` too (it reaches the replica's ``chat`` and ``complete`` through
a handle), with what only it knows: other models, download progress, bounded cold starts.

(No ``from __future__ import annotations`` here: FastAPI must see real types on the routes.)
"""

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from fastapi import FastAPI
from ray import serve

from candle.api.errors import model_not_found, wrong_capability
from candle.api.models import ModelStatus, model_card
from candle.api.schemas import ChatCompletionRequest, CompletionRequest
from candle.catalog import ModelSpec
from candle.catalog.capabilities import capabilities_for
from candle.contracts import Sent, TextChunk

from .. import http_errors, metrics, streaming
from ..front import GatewaySettings, open_front
from ..http_errors import ERRORS
from .chat import ChatReplica

C = TypeVar("C", bound=Sent)
Method = Callable[[C], AsyncIterator[TextChunk]]

app = FastAPI(title="candle model", description="One chat model's own OpenAI-compatible base URL.")
http_errors.install(app)


@serve.ingress(app)
class ChatIngress(ChatReplica):
    async def __init__(self, spec: dict[str, Any] | ModelSpec, settings: dict[str, Any] | None = None) -> None:  # type: ignore[misc]  # an async constructor: Ray Serve awaits it
        await super().__init__(spec)
        self.images = open_front(app, GatewaySettings.model_validate(settings or {}), {self.spec.name: self.spec})

    def _model(self, name: str, endpoint: str) -> ModelSpec:
        """This replica's model, if ``name`` is it and it serves ``endpoint``; otherwise the gateway's error."""
        if name != self.spec.name:
            raise model_not_found(name)
        metrics.attribute(self.spec)
        if self.spec.capability not in capabilities_for(endpoint):
            raise wrong_capability(name, self.spec.capability, endpoint)
        return self.spec

    @app.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models", responses=ERRORS)
    async def list_models(self) -> dict[str, Any]:
        return {"object": "list", "data": [model_card(self.spec, ModelStatus("ready"))]}

    @app.get("/v1/models/{name:path}", responses=ERRORS)
    async def get_model(self, name: str) -> dict[str, Any]:
        if name != self.spec.name:
            raise model_not_found(name)
        return model_card(self.spec, ModelStatus("ready"))

    @app.post("/v1/chat/completions", responses=ERRORS)
    async def chat_completions(self, body: ChatCompletionRequest) -> Any:
        spec = self._model(body.model, "/v1/chat/completions")
        return await streaming.chat_answer(body, spec, self.images, self._run(self.chat), streaming.now)

    @app.post("/v1/completions", responses=ERRORS)
    async def completions(self, body: CompletionRequest) -> Any:
        spec = self._model(body.model, "/v1/completions")
        return await streaming.completion_answer(body, spec, self._run(self.complete), streaming.now)

    @staticmethod
    def _run(method: Method[C]) -> Method[C]:
        """``method`` (``chat`` or ``complete``) on a call stamped as it starts, as the gateway stamps one
        it sends, so the replica's queue-time metric means the same on both fronts."""
        return lambda call: method(metrics.stamped(call))
