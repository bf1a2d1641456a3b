"""Joining a Ray cluster from candle's command line and jobs, quietly and predictably."""

from __future__ import annotations

import logging
import os
from functools import partial

import ray
from ray.exceptions import RayTaskError


def connect(namespace: str = "candle") -> None:
    """Join ``RAY_ADDRESS`` if set, else a cluster running on this machine, else start a local one.

    Ray's own chatter stays out of the terminal (the CLI prints results on stdout and one error
    line on stderr); authentication follows Ray's defaults (``RAY_AUTH_MODE`` and its token file),
    so the CLI joins whatever cluster ``ray start`` or ``serve run`` made on this machine.
    """
    if ray.is_initialized():
        return
    quiet = partial(ray.init, logging_level=logging.ERROR, log_to_driver=False, namespace=namespace)
    if os.environ.get("RAY_ADDRESS"):
        quiet()
        return
    try:
        quiet(address="auto")
    except ConnectionError:
        quiet(address="local", include_dashboard=False)


def unwrap_error(error: BaseException) -> BaseException:
    """The exception an actor or task raised, without Ray's wrapper and its remote traceback."""
    while isinstance(error, RayTaskError) and isinstance(error.cause, BaseException):
        error = error.cause
    return error


def error_line(error: BaseException) -> str:
    """An operator's one-line view of a failure: a download error's own words, else type and message."""
    from candle.download.errors import DownloadError

    cause = unwrap_error(error)
    text = str(cause) if isinstance(cause, DownloadError) else f"{type(cause).__name__}: {cause}"
    return text.strip().splitlines()[0] if text.strip() else type(cause).__name__
