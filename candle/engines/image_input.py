"""Images as engines read them: the gateway has already checked the bytes (format, pixel count, a
full decode); a replica called directly still opens only candle's formats, under PIL's own
decompression-bomb limit."""

from __future__ import annotations

import io
import struct

from PIL import Image, UnidentifiedImageError

from candle.contracts import IMAGE_FORMATS

from .errors import InvalidInput

# What PIL raises on malformed input besides OSError (which covers truncation and unknown formats).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, UnidentifiedImageError)


def decode_image(data: bytes) -> Image.Image:
    """RGB pixels; a bad image is the caller's mistake (``InvalidInput``), failing only its request."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            return image.convert("RGB")
    except (*_DECODE_ERRORS, Image.DecompressionBombError) as e:
        raise InvalidInput(
            f"the image could not be decoded ({type(e).__name__}): send a PNG, JPEG, WebP or GIF"
        ) from None
