"""Error mapping: every refusal and failure the gateway answers, in OpenAI's shape.

FastAPI's own refusals (validation, unknown route, unreadable body) and candle's ``APIError`` become
``{"error": {...}}`` bodies; a replica's failure becomes what its client should see: its own
mistakes a 400, overload a 503 with ``Retry-After``, anything else a 500 that says nothing internal.
"""

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException

from candle.api.errors import APIError, bad_request
from candle.api.schemas import ErrorResponse
from candle.engines.errors import InvalidInput
from candle.raycluster import unwrap_error

from . import metrics

logger = logging.getLogger("ray.serve")

# What the API's routes may answer besides success, for the OpenAPI schema (all in OpenAI's shape).
ERRORS: dict[int | str, dict[str, Any]] = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 503)}


async def api_error(request: Request, error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers())


async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own refusals (unknown route, wrong method, an unreadable body) in OpenAI's shape too."""
    code = "not_found" if error.status_code == 404 else None
    return await api_error(request, APIError(error.status_code, str(error.detail), code=code))


async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    metrics.claim(error.body)
    first = error.errors()[0] if error.errors() else {}
    where = (first.get("ctx") or {}).get("param") or ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    reason = str(first.get("msg", "malformed body")).removeprefix("Value error, ")
    message = f"Invalid request: {reason}" + (f" (at '{where}')" if where else "")
    return await api_error(request, bad_request(message, param=where or None))


def install(app: FastAPI) -> None:
    app.add_exception_handler(APIError, api_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]


def client_error(error: BaseException) -> APIError:
    """What a client sees of a replica's failure: its own mistakes as 400, overload as 503, the rest as 500."""
    cause = unwrap_error(error)
    if isinstance(cause, APIError):
        return cause
    if isinstance(cause, InvalidInput):
        return bad_request(str(cause))
    if isinstance(cause, BackPressureError):  # past the model's queue: Retry-After is its latency budget
        return APIError(
            503,
            "The model is overloaded; retry later.",
            type="service_unavailable",
            code="overloaded",
            retry_after=cause.retry_after_s or 1,
        )
    logger.error("model call failed: %s", cause)
    return APIError(500, "The model failed to process the request.", type="server_error", code="internal_error")
