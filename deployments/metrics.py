"""Serving metrics per model, defined here once, recorded by thin hooks in the gateway and replicas.

They go through Ray's metrics API, so each node's metrics agent exports them to Prometheus with
Ray's ``ray_`` prefix (``ray_candle_requests_total``, ``ray_candle_request_duration_seconds_bucket``)
and Ray's own labels (``NodeAddress``, ``WorkerId``, ...). Every series carries ``model`` (the catalog
name clients send) and ``capability``, so one saturated model is not averaged away.

The HTTP fronts (the gateway; a chat model's replicas at its own base URL) see the HTTP side
(requests by route and status code, end-to-end latency until the answer's last byte); the gateway
also the state of each model and its replicas (from Serve's status, which it refreshes anyway: a
gauge a replica set itself would outlive the replica in Ray's exporter). The
replicas see the model side: queue time (from the moment the gateway sent the call, ``Sent.sent_at``,
to the engine starting on it: the wait for a free replica, for a batch, for a thread), time to first
token and per output token, tokens, items and images per request, batch sizes, cold starts. Wall
clocks of two nodes differ by their NTP offset, which a queue time measured across nodes includes.
vLLM's own engine metrics (``ray_vllm_*``, labelled ``model_name``) come from its Ray stat logger.
Read latencies from the buckets (``histogram_quantile``): Ray exports a histogram's ``_sum`` from its
buckets' midpoints, not from the values observed.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace
from functools import cache
from typing import Any, TypeVar, get_args

from fastapi import FastAPI
from ray.serve.schema import ReplicaState
from ray.util.metrics import Counter, Gauge, Histogram
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from candle.api.models import ModelStatus, State
from candle.catalog import ModelSpec
from candle.contracts import EmbedCall, ImageCall, RerankCall, Sent, TextChunk

# Seconds: a 5 ms embedding and a 60 s picture (or a 5 min cold start) each land in a bucket of
# their own scale, about two per factor of ten; request_duration p50 and p99 are read from these.
LATENCY_BUCKETS_S = (
    *(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
    *(1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 300.0),
)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
MODEL = ("model", "capability")
MODEL_STATES: tuple[State, ...] = get_args(State)
REPLICA_STATES = tuple(state.value.lower() for state in ReplicaState)


class ServingMetrics:
    """Every serving metric, created once per process (``serving_metrics()``)."""

    def __init__(self) -> None:
        def histogram(name: str, description: str, buckets: Sequence[float], tags: tuple[str, ...] = MODEL):
            return Histogram(name, description, list(buckets), tags)

        self.requests = Counter(
            "candle_requests", "Requests answered over HTTP, by route and HTTP status code", (*MODEL, "route", "code")
        )
        self.duration = histogram(
            "candle_request_duration_seconds",
            "Time from receiving a request to its answer's last byte (streams whole)",
            LATENCY_BUCKETS_S,
            (*MODEL, "route"),
        )
        self.queue = histogram(
            "candle_queue_time_seconds",
            "Time from the gateway sending a call to the model's engine starting on it",
            LATENCY_BUCKETS_S,
        )
        self.ttft = histogram(
            "candle_time_to_first_token_seconds",
            "Time from the gateway sending a text call to the engine's first output",
            LATENCY_BUCKETS_S,
        )
        self.tpot = histogram(
            "candle_time_per_output_token_seconds",
            "Time between output tokens after the first, per text call",
            LATENCY_BUCKETS_S,
        )
        self.input_tokens = Counter("candle_input_tokens", "Prompt and input tokens the engines read", MODEL)
        self.output_tokens = Counter("candle_output_tokens", "Tokens the text engines generated", MODEL)
        self.items = histogram(
            "candle_request_items",
            "Inputs per embedding call (texts or images), pictures per image call",
            COUNT_BUCKETS,
        )
        self.batch = histogram(
            "candle_batch_size", "Inputs per engine pass (embeddings) or pictures per pipeline call", COUNT_BUCKETS
        )
        self.cold_start = histogram(
            "candle_cold_start_seconds",
            "Time from a replica's start to its engine loaded, its weights' fetch included",
            LATENCY_BUCKETS_S,
        )
        self.engine_load = histogram(
            "candle_engine_load_seconds", "Time a replica took to load its engine from disk", LATENCY_BUCKETS_S
        )
        self.model_state = Gauge("candle_model_state", "1 for the model's state in /v1/models", (*MODEL, "state"))
        self.replicas = Gauge("candle_replicas", "Replicas of the model by Serve's replica state", (*MODEL, "state"))


@cache
def serving_metrics() -> ServingMetrics:
    return ServingMetrics()


def tags(spec: ModelSpec) -> dict[str, str]:
    return {"model": spec.name, "capability": spec.capability}


# -- the gateway -------------------------------------------------------------------------------


@dataclass
class _Request:
    """One HTTP request as the metrics see it: the model the route resolved, and its status code."""

    started: float
    model: str = ""  # none resolved: another route, or a refusal before the model was known
    capability: str = ""
    code: int | None = None
    claimed: object = None  # the `model` of a body refused before its route ran


_REQUEST: ContextVar[_Request | None] = ContextVar("candle_request", default=None)


class RequestMetrics:
    """ASGI middleware around everything else: counts each request by route and status code and times
    it until the last byte of its answer, so a stream counts whole and the guards' refusals count too.
    Only catalog names and the app's route templates become labels, never what a client wrote."""

    def __init__(self, app: ASGIApp, routes: Sequence[Any], specs: Mapping[str, ModelSpec]) -> None:
        self.app = app
        self.routes = routes
        self.specs = specs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = _Request(time.monotonic())
        token = _REQUEST.set(request)

        async def observed(message: Message) -> None:
            if message["type"] == "http.response.start" and request.code is None:
                request.code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            _REQUEST.reset(token)
            if not request.model and isinstance(request.claimed, str) and request.claimed in self.specs:
                attribute(self.specs[request.claimed], request)
            labels = {"model": request.model, "capability": request.capability, "route": self._route(scope)}
            metrics = serving_metrics()
            metrics.requests.inc(1, {**labels, "code": str(request.code or 500)})
            metrics.duration.observe(time.monotonic() - request.started, labels)

    def _route(self, scope: Scope) -> str:
        """The route template FastAPI matched; for a request refused before routing, the one it would have."""
        if route := scope.get("route"):
            return route.path
        return next((r.path for r in self.routes if r.matches(scope)[0] == Match.FULL), "other")


def install(app: FastAPI, specs: Mapping[str, ModelSpec]) -> None:
    """Add the request metrics around the app's other middleware, once (the app is module-level)."""
    if not any(m.cls is RequestMetrics for m in app.user_middleware):
        app.add_middleware(RequestMetrics, routes=app.routes, specs=specs)


def attribute(spec: ModelSpec, request: _Request | None = None) -> None:
    """The current request is for ``spec``'s model (called where a route resolves the model)."""
    if request := request or _REQUEST.get():
        request.model, request.capability = spec.name, spec.capability


def claim(body: object) -> None:
    """The current request's body, refused before its route ran: its ``model``, if a catalog name, labels it."""
    if (request := _REQUEST.get()) and isinstance(body, dict):
        request.claimed = body.get("model")


def failed_in_band(status: int) -> None:
    """The current request's answer started as a success and ended with an error event of ``status``."""
    if request := _REQUEST.get():
        request.code = status


C = TypeVar("C", bound=Sent)


def stamped(call: C) -> C:
    """``call`` stamped with when it left the gateway's hands: for a coalesced call, as it joined the
    model's queue, so its queue time counts the wait for a list as well."""
    return replace(call, sent_at=time.time())


def send(method: Any, call: C) -> Any:
    """``method.remote(call)`` on a model's handle, the call stamped with when it left for the replica."""
    return method.remote(stamped(call))


def publish_status(specs: Mapping[str, ModelSpec], statuses: Mapping[str, ModelStatus]) -> None:
    """Each model's state and its replicas by Serve's replica state, as the gateway last collected them."""
    metrics = serving_metrics()
    for name, status in statuses.items():
        labels = tags(specs[name])
        for state in MODEL_STATES:
            metrics.model_state.set(1.0 if status.state == state else 0.0, {**labels, "state": state})
        for replica_state in REPLICA_STATES:
            metrics.replicas.set(status.replica_states.get(replica_state, 0), {**labels, "state": replica_state})


# -- the replicas ------------------------------------------------------------------------------


def _queued(spec: ModelSpec, call: Sent, now: float) -> None:
    if call.sent_at is not None:
        serving_metrics().queue.observe(max(0.0, now - call.sent_at), tags(spec))


def calls_started(spec: ModelSpec, calls: Iterable[EmbedCall | ImageCall | RerankCall]) -> None:
    """``calls`` reach their engine now: each one's queue time and inputs (items, images or
    documents), once per call even where a failed group of them runs again."""
    metrics, labels, now = serving_metrics(), tags(spec), time.time()
    for call in calls:
        _queued(spec, call, now)
        metrics.items.observe(_inputs(call), labels)


def pass_started(spec: ModelSpec, inputs: int) -> None:
    """An engine pass (a forward pass, a pipeline call) over ``inputs`` inputs starts now."""
    serving_metrics().batch.observe(inputs, tags(spec))


def _inputs(call: EmbedCall | ImageCall | RerankCall) -> int:
    """A call's inputs: texts or images to embed, images to draw, documents to score."""
    if isinstance(call, EmbedCall):
        return len(call.items)
    return call.n if isinstance(call, ImageCall) else len(call.documents)


def read_tokens(spec: ModelSpec, count: int) -> None:
    if count > 0:
        serving_metrics().input_tokens.inc(count, tags(spec))


async def text_stream(spec: ModelSpec, call: Sent, chunks: AsyncIterator[TextChunk]) -> AsyncIterator[TextChunk]:
    """``chunks`` passed through, recording the call's queue time, time to first output, time per
    output token and tokens (from the last chunk, which carries the counts)."""
    metrics, labels = serving_metrics(), tags(spec)
    started = time.time()
    _queued(spec, call, started)
    first: float | None = None
    async for chunk in chunks:
        now = time.time()
        if first is None and chunk.has_output:
            first = now
            metrics.ttft.observe(now - (call.sent_at or started), labels)
        if chunk.finish_reason:
            read_tokens(spec, chunk.prompt_tokens)
            if chunk.completion_tokens > 0:
                metrics.output_tokens.inc(chunk.completion_tokens, labels)
            if first is not None and chunk.completion_tokens > 1:
                metrics.tpot.observe((now - first) / (chunk.completion_tokens - 1), labels)
        yield chunk


def replica_started(spec: ModelSpec, started: float, weights_ready: float) -> None:
    """A replica's engine is loaded: its cold start since ``started`` and the load since ``weights_ready``
    (both ``time.monotonic()``)."""
    metrics, labels, now = serving_metrics(), tags(spec), time.monotonic()
    metrics.cold_start.observe(now - started, labels)
    metrics.engine_load.observe(now - weights_ready, labels)
