"""Images sent by clients: base64 data URLs (always) or remote URLs (only when configured).

Checked before any model sees them: valid base64, a format PIL can read, and at most
``max_pixels`` pixels (read from the header, before decoding the pixels). Remote fetches are off
by default so the gateway cannot be used to reach arbitrary addresses.
"""

from __future__ import annotations

import base64
import binascii
import io
import re

import httpx
from PIL import Image, UnidentifiedImageError

from .errors import APIError, bad_request, too_large

_DATA_URL = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,(?P<data>.*)$", re.DOTALL)
REMOTE_FETCH_TIMEOUT_S = 10.0


def is_image_reference(value: str) -> bool:
    return value.startswith(("data:image/", "http://", "https://"))


def load_image_bytes(url: str, *, param: str, max_pixels: int, max_bytes: int, allow_remote: bool) -> bytes:
    """The image's encoded bytes, validated; raises an ``APIError`` that says what is wrong."""
    if url.startswith(("http://", "https://")):
        if not allow_remote:
            raise bad_request(
                "Remote image URLs are disabled on this server; send the image as a base64 data URL "
                "(data:image/png;base64,...).",
                param=param,
                code="remote_images_disabled",
            )
        data = _fetch_remote(url, param=param, max_bytes=max_bytes)
    elif match := _DATA_URL.match(url):
        try:
            data = base64.b64decode(match["data"], validate=True)
        except (binascii.Error, ValueError):
            raise bad_request(
                "The image data URL does not contain valid base64.", param=param, code="invalid_base64"
            ) from None
    else:
        raise bad_request("Images must be base64 data URLs like data:image/png;base64,....", param=param)
    check_image(data, param=param, max_pixels=max_pixels)
    return data


def check_image(data: bytes, *, param: str, max_pixels: int) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError):
        raise bad_request(
            "The image could not be decoded (unsupported or corrupt format).", param=param, code="invalid_image"
        ) from None
    if width * height > max_pixels:
        raise too_large(f"The image has {width}x{height} pixels; the limit is {max_pixels} pixels.", param=param)
    return width, height


def _fetch_remote(url: str, *, param: str, max_bytes: int) -> bytes:
    try:
        with httpx.stream("GET", url, timeout=REMOTE_FETCH_TIMEOUT_S, follow_redirects=False) as response:
            if response.status_code != 200:
                raise bad_request(f"Fetching the image failed with HTTP {response.status_code}.", param=param)
            data = b""
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > max_bytes:
                    raise too_large(f"The remote image is larger than {max_bytes} bytes.", param=param)
            return data
    except httpx.HTTPError as e:
        raise APIError(400, f"Fetching the image failed: {type(e).__name__}.", param=param) from None
