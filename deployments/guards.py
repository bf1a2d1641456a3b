"""ASGI middleware around the gateway app: what must be decided before FastAPI reads or parses a body.

From the outside in: a deadline on the whole request (503 + ``Retry-After``, or an in-band error
event when an SSE stream has started), the API key from the headers alone (a stranger's 32 MB body
is never read), and the body: its size, counted as it arrives, declared or chunked; the bytes of
all bodies the replica holds at once (503 + ``Retry-After`` past them); and the count of its JSON
values, before anything parses it. Every refusal is an OpenAI-shaped error.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Sequence

from fastapi import FastAPI
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from candle.api.errors import APIError, too_large, unauthorized
from candle.api.limits import json_values
from candle.api.responses import sse

from . import metrics

logger = logging.getLogger("ray.serve")

OPEN_PATHS = frozenset({"/health"})


async def send_error(send: Send, error: APIError) -> None:
    response = JSONResponse(error.body(), status_code=error.status, headers=error.headers())
    await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


def route_path(scope: Scope) -> str:
    """The path below the app's route prefix (Serve passes the prefix as ``root_path``)."""
    path, root = scope["path"], scope.get("root_path", "")
    return (path[len(root) :] or "/") if root and path.startswith(root) else path


class Deadline:
    """Ends every request after ``seconds``: the handler is cancelled (and with it the model call)."""

    def __init__(self, app: ASGIApp, seconds: float, retry_after_s: float) -> None:
        self.app = app
        self.seconds = seconds
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        content_type: bytes | None = None  # set once the response's headers are sent

        async def tracked(message: Message) -> None:
            nonlocal content_type
            if message["type"] == "http.response.start":
                content_type = dict(message.get("headers") or []).get(b"content-type", b"")
            await send(message)

        try:
            async with asyncio.timeout(self.seconds) as deadline:
                await self.app(scope, receive, tracked)
        except TimeoutError:
            if not deadline.expired():
                raise
            error = APIError(
                503,
                f"The request did not finish within {self.seconds:g} s; ask for less (max_tokens, n, prompts) "
                "or retry later.",
                type="service_unavailable",
                code="timeout",
                retry_after=self.retry_after_s,
            )
            if content_type is None:
                await send_error(send, error)
            else:  # headers are gone: an SSE stream ends with the error event and [DONE], as OpenAI's do
                metrics.failed_in_band(error.status)
                frames = sse(error.body()) + sse("[DONE]") if content_type.startswith(b"text/event-stream") else ""
                await send({"type": "http.response.body", "body": frames.encode(), "more_body": False})


class ApiKeys:
    """401 for requests without a valid ``Authorization: Bearer <key>``, from the headers alone."""

    def __init__(self, app: ASGIApp, keys: Sequence[str]) -> None:
        self.app = app
        self.keys = [key.encode() for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and route_path(scope) not in OPEN_PATHS and not self._authorized(scope):
            await send_error(send, unauthorized())
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        token = header[7:].strip() if header[:7].lower() == b"bearer " else b""
        return any(hmac.compare_digest(token, key) for key in self.keys)


class BodiesInFlight:
    """The bytes of request bodies one gateway replica holds at once, each reserved as it is declared
    or arrives: many large bodies at once would otherwise take the replica's memory (a 32 MiB body
    of tiny JSON objects parses into gigabytes). The guards share one per replica (its one loop)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        self.held -= size


class BodyLimit:
    """413 for bodies over ``max_bytes`` (declared or streamed) or ``max_values`` JSON values, 503 while
    the replica holds ``in_flight.limit`` bytes of bodies; all before anything parses them.

    The body is read here and handed on whole: FastAPI turns any error raised while it reads a body
    into a 400, so the limits have to be enforced before it starts.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, max_values: int, in_flight: BodiesInFlight, retry_after_s: float
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_values = max_values
        self.in_flight = in_flight
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await send_error(send, self._too_large())
            return
        reserved = 0  # bytes of this body counted in in_flight: the declared length, or what arrived
        try:
            if declared is not None and declared.isdigit():
                if not self.in_flight.take(int(declared)):
                    await send_error(send, self._busy())
                    return
                reserved = int(declared)
            chunks: list[bytes] = []
            size, more = 0, True
            while more:
                message = await receive()
                if message["type"] != "http.request":  # the client went away
                    return
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > self.max_bytes:
                    await send_error(send, self._too_large())
                    return
                if size > reserved:
                    if not self.in_flight.take(size - reserved):
                        await send_error(send, self._busy())
                        return
                    reserved = size
                more = message.get("more_body", False)
            body: bytes | None = b"".join(chunks)
            if body and json_values(body, self.max_values) > self.max_values:
                await send_error(send, self._too_many_values())
                return

            async def replay() -> Message:
                nonlocal body
                if body is None:
                    return await receive()
                message, body = {"type": "http.request", "body": body, "more_body": False}, None
                return message

            await self.app(scope, replay, send)
        finally:
            self.in_flight.give_back(reserved)

    def _too_large(self) -> APIError:
        return too_large(f"Request body is larger than {self.max_bytes} bytes.")

    def _too_many_values(self) -> APIError:
        return too_large(
            f"Request body holds more than {self.max_values} JSON values (the gateway's max_body_values "
            f"({self.max_values})); send fewer items per request."
        )

    def _busy(self) -> APIError:
        return APIError(
            503,
            f"This gateway replica holds as many request bodies as its max_body_bytes_in_flight "
            f"({self.in_flight.limit}) allows; retry later.",
            type="service_unavailable",
            code="overloaded",
            retry_after=self.retry_after_s,
        )


def api_keys(candidates: Sequence[str], *, required: bool, env_var: str) -> list[str]:
    """The keys clients must send (blanks dropped). None configured opens the API to anyone who
    reaches it: said loudly at start, or, with ``required``, refused, so a replica on a node whose
    secret is missing fails to start instead of serving open beside keyed ones."""
    keys = [key.strip() for key in candidates if key.strip()]
    if not keys and required:
        raise ValueError(
            f"require_api_keys is set but no API key is configured: set {env_var} on this node "
            "(comma-separated keys) or api_keys in the gateway settings"
        )
    if not keys:
        logger.warning(
            "No API keys are configured: every route of this gateway is open to anyone who can reach it. "
            "Set %s (comma-separated keys), and require_api_keys in the gateway settings to refuse to start "
            "without them.",
            env_var,
        )
    return keys


def install(
    app: FastAPI,
    *,
    max_body_bytes: int,
    max_body_values: int,
    max_body_bytes_in_flight: int,
    api_keys: Sequence[str],
    deadline_s: float,
    retry_after_s: float,
) -> None:
    """Add the guards to the app once (it is module-level, as ``serve.ingress`` needs; one gateway per process)."""
    if any(m.cls is BodyLimit for m in app.user_middleware):
        return
    app.add_middleware(
        BodyLimit,
        max_bytes=max_body_bytes,
        max_values=max_body_values,
        in_flight=BodiesInFlight(max_body_bytes_in_flight),
        retry_after_s=retry_after_s,
    )
    if api_keys:  # none configured: the API is open
        app.add_middleware(ApiKeys, keys=list(api_keys))
    app.add_middleware(Deadline, seconds=deadline_s, retry_after_s=retry_after_s)
