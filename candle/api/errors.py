"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status.

Raised anywhere in request handling (gateway or model replica); the gateway turns them into JSON
responses, keeping ``Retry-After`` where a client should come back later.
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """An error a client should see, with OpenAI's fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002 - OpenAI's field name
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.retry_after = retry_after
        self.extra = extra or {}

    def __reduce__(self) -> tuple[Any, ...]:
        # Replicas raise these through Ray: pickle by fields so the gateway gets the same error back.
        return (_rebuild, (self.status, self.message, self.type, self.param, self.code, self.retry_after, self.extra))

    def body(self) -> dict[str, Any]:
        return {
            "error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code, **self.extra}
        }

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, round(self.retry_after)))} if self.retry_after is not None else {}


def _rebuild(status, message, type_, param, code, retry_after, extra) -> APIError:
    return APIError(status, message, type=type_, param=param, code=code, retry_after=retry_after, extra=extra)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def too_large(message: str, param: str | None = None) -> APIError:
    return APIError(413, message, param=param, code="request_too_large")


def model_not_found(model: str) -> APIError:
    return APIError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")


def wrong_capability(model: str, capability: str, endpoint: str) -> APIError:
    return APIError(
        400,
        f"The model `{model}` is a {capability} model and cannot serve {endpoint}.",
        param="model",
        code="model_not_supported",
    )


def unauthorized() -> APIError:
    return APIError(
        401,
        "Missing or invalid API key. Send it as 'Authorization: Bearer <key>'.",
        type="authentication_error",
        code="invalid_api_key",
    )
