"""Images sent by clients: base64 data URLs (always) or remote URLs (only when configured).

Checked before any model sees them: a declared type and a decoded format among PNG, JPEG, WebP
and GIF (PIL is never asked to try its other plugins: EPS would run Ghostscript where installed,
and every extra decoder is more attack surface), at most ``max_pixels`` pixels (read from the
header, before decoding the pixels), then one full decode, so truncated or corrupt files are
refused here rather than failing a model's batch. Decoding is blocking CPU work: callers on an
event loop run ``load_images`` in a thread. Remote fetches are off by default (see
``remote_fetch`` for what they may reach); a request's images are fetched together, under one
deadline, so eight slow images cost one deadline, not eight.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from candle.image_formats import IMAGE_DECODE_ERRORS, IMAGE_FORMATS

from .errors import bad_request, too_large
from .remote_fetch import REMOTE_FETCH_DEADLINE_S, IPNetwork, fetch_remote

# The data-URL subtypes that declare each format candle reads.
DECLARED_TYPES = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP", "gif": "GIF"}
ACCEPTED = "PNG, JPEG, WebP or GIF"

_DATA_URL = re.compile(r"^data:image/(?P<type>[A-Za-z0-9.+-]{1,40});base64,(?P<data>.*)$", re.DOTALL)
# Images of one request read at once: their fetches mostly wait on the network.
MAX_CONCURRENT_IMAGES = 8


@dataclass(frozen=True)
class ImageReference:
    url: str
    param: str  # where it was in the request, for error messages: messages[1].content[0]


def is_image_reference(value: str) -> bool:
    return value.startswith(("data:image/", "http://", "https://"))


def load_images(
    images: Sequence[ImageReference],
    *,
    max_pixels: int,
    max_bytes: int,
    allow_remote: bool,
    allowed_networks: Sequence[IPNetwork] = (),
    deadline_s: float = REMOTE_FETCH_DEADLINE_S,
) -> list[bytes]:
    """Every image of one request, as ``load_image_bytes`` reads each, read concurrently with one
    deadline for all their fetches; the first failure (in request order) is the request's error.
    Blocking: run it off the event loop."""
    if not images:
        return []
    started = time.monotonic()
    pool = ThreadPoolExecutor(min(len(images), MAX_CONCURRENT_IMAGES), thread_name_prefix="candle-image")
    read = functools.partial(
        load_image_bytes,
        max_pixels=max_pixels,
        max_bytes=max_bytes,
        allow_remote=allow_remote,
        allowed_networks=allowed_networks,
        deadline_s=deadline_s,
        started=started,
    )
    try:
        reads = [pool.submit(read, image.url, param=image.param) for image in images]
        return [done.result() for done in reads]
    finally:  # after a failure the others are not waited for: the deadline ends their fetches
        pool.shutdown(wait=False, cancel_futures=True)


def load_image_bytes(
    url: str,
    *,
    param: str,
    max_pixels: int,
    max_bytes: int,
    allow_remote: bool,
    allowed_networks: Sequence[IPNetwork] = (),
    deadline_s: float = REMOTE_FETCH_DEADLINE_S,
    started: float | None = None,
) -> bytes:
    """The image's encoded bytes, fully decoded once to check them; raises an ``APIError`` that says
    what is wrong. A remote fetch ends ``deadline_s`` after ``started`` (now by default). Blocking
    (network, decoding): run it off the event loop."""
    if url.startswith(("http://", "https://")):
        if not allow_remote:
            raise bad_request(
                "Remote image URLs are disabled on this server; send the image as a base64 data URL "
                "(data:image/png;base64,...).",
                param=param,
                code="remote_images_disabled",
            )
        data = fetch_remote(
            url, param=param, max_bytes=max_bytes, allowed=allowed_networks, deadline_s=deadline_s, started=started
        )
    elif match := _DATA_URL.match(url):
        if match["type"].lower() not in DECLARED_TYPES:
            raise bad_request(
                f"Images must be {ACCEPTED}; the data URL declares image/{match['type']}.",
                param=param,
                code="unsupported_image_type",
            )
        try:
            data = base64.b64decode(match["data"], validate=True)
        except (binascii.Error, ValueError):
            raise bad_request(
                "The image data URL does not contain valid base64.", param=param, code="invalid_base64"
            ) from None
    else:
        raise bad_request("Images must be base64 data URLs like data:image/png;base64,....", param=param)
    open_image(data, param=param, max_pixels=max_pixels).close()
    return data


def open_image(data: bytes, *, param: str | None, max_pixels: int) -> Image.Image:
    """``data`` decoded (first frame of an animation), once its format and pixel count passed."""
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise bad_request(f"The image is not {ACCEPTED} (or is corrupt).", param=param, code="invalid_image") from None
    except Image.DecompressionBombError as e:  # declares far more pixels than PIL will decode
        raise bad_request(f"The image is too large to decode: {e}", param=param, code="invalid_image") from None
    except IMAGE_DECODE_ERRORS:
        raise bad_request("The image header is corrupt.", param=param, code="invalid_image") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise too_large(f"The image has {width}x{height} pixels; the limit is {max_pixels} pixels.", param=param)
    try:
        image.load()
    except IMAGE_DECODE_ERRORS:
        image.close()
        raise bad_request(
            "The image could not be decoded: it is truncated or corrupt.", param=param, code="invalid_image"
        ) from None
    return image
