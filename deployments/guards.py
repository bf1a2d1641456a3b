"""ASGI middleware around the gateway app: what must be decided before FastAPI reads or parses a body.

From the outside in: a deadline on the whole request (503 + ``Retry-After``, or an in-band error
event when an SSE stream has started), the API key from the headers alone (a stranger's 32 MB body
is never read), and the body-size limit, counted as the body arrives, declared or chunked. Every
refusal is an OpenAI-shaped error.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Sequence

from fastapi import FastAPI
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from candle.api.errors import APIError, too_large, unauthorized
from candle.api.responses import sse

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


class BodyLimit:
    """413 for bodies over ``max_bytes``, declared or streamed, before anything parses them.

    The body is read here and handed on whole: FastAPI turns any error raised while it reads a body
    into a 400, so the limit has to be enforced before it starts.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await send_error(send, self._too_large())
            return
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
            more = message.get("more_body", False)
        body: bytes | None = b"".join(chunks)

        async def replay() -> Message:
            nonlocal body
            if body is None:
                return await receive()
            message, body = {"type": "http.request", "body": body, "more_body": False}, None
            return message

        await self.app(scope, replay, send)

    def _too_large(self) -> APIError:
        return too_large(f"Request body is larger than {self.max_bytes} bytes.")


def install(app: FastAPI, *, max_body_bytes: int, api_keys: Sequence[str], deadline_s: float, retry_after_s: float):
    """Add the guards to the app once (it is module-level, as ``serve.ingress`` needs; one gateway per process)."""
    if any(m.cls is BodyLimit for m in app.user_middleware):
        return
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    if api_keys:  # none configured: the API is open
        app.add_middleware(ApiKeys, keys=list(api_keys))
    app.add_middleware(Deadline, seconds=deadline_s, retry_after_s=retry_after_s)
