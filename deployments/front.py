"""What every HTTP front of candle is set up with: the gateway at ``/v1`` and a chat model's own base URL.

Both answer OpenAI's API to the same clients, so both take the same settings (``GatewaySettings``,
``args.gateway`` in each app's Serve config), refuse with the same guards (API keys, body size and
values, bodies in flight, the request deadline) and count requests in the same metrics.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork, model_validator

from candle.api.calls import ImageAccess
from candle.api.limits import DEFAULT_MAX_BODY_BYTES
from candle.catalog import ModelSpec

from . import guards, metrics


class GatewaySettings(BaseModel):
    """An HTTP front's options (``args.gateway`` in the Serve config of the gateway and of each chat model)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt guard must not leave a front open

    api_keys_env: str = "CANDLE_API_KEYS"  # env var of comma-separated keys (preferred: keeps keys out of configs)
    api_keys: list[str] = Field(default_factory=list, repr=False)  # more keys, from the Serve config
    # A replica that finds no key fails to start, instead of serving open (without it: a warning).
    require_api_keys: bool = False
    allow_remote_images: bool = False
    # Non-public networks remote images may come from anyway (an internal image store); never metadata.
    remote_image_allowed_networks: list[IPvAnyNetwork] = Field(default_factory=list)
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024)
    # JSON values (the document, every element and member value) a body may hold, counted before it is
    # parsed: a 32 MiB body of 2M tiny objects costs seconds of CPU and gigabytes to parse and validate.
    max_body_values: int = Field(default=65_536, ge=1024)
    # Bytes of request bodies one replica holds at once; past them new requests get 503 + Retry-After.
    max_body_bytes_in_flight: int = Field(default=256 * 1024 * 1024, ge=1024)
    retry_after_s: int = 5
    # Every request ends by then (503, or an error event in a started stream), and its model call is cancelled.
    request_timeout_s: float = Field(default=300.0, gt=0)

    @model_validator(mode="after")
    def _a_full_body_fits_in_flight(self) -> GatewaySettings:
        if self.max_body_bytes_in_flight < self.max_body_bytes:
            raise ValueError(
                f"max_body_bytes_in_flight ({self.max_body_bytes_in_flight}) is below max_body_bytes "
                f"({self.max_body_bytes}): no body of the allowed size could be served"
            )
        return self


def open_front(app: FastAPI, settings: GatewaySettings, specs: Mapping[str, ModelSpec]) -> ImageAccess:
    """Put the guards and the request metrics around ``app`` (once: the app is module-level, one per
    process); where its requests' images may come from."""
    keys = guards.api_keys(
        os.environ.get(settings.api_keys_env, "").split(",") + settings.api_keys,
        required=settings.require_api_keys,
        env_var=settings.api_keys_env,
    )
    guards.install(
        app,
        max_body_bytes=settings.max_body_bytes,
        max_body_values=settings.max_body_values,
        max_body_bytes_in_flight=settings.max_body_bytes_in_flight,
        api_keys=keys,
        deadline_s=settings.request_timeout_s,
        retry_after_s=settings.retry_after_s,
    )
    metrics.install(app, specs)
    networks = tuple(settings.remote_image_allowed_networks)
    return ImageAccess(settings.max_body_bytes, settings.allow_remote_images, networks)
