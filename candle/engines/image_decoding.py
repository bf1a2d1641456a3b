"""Images as engines read them: the gateway has already checked the bytes (format, pixel count, a
full decode); a replica called directly still opens only candle's formats, under PIL's own
decompression-bomb limit."""

from __future__ import annotations

import io

from PIL import Image

from candle.image_formats import IMAGE_DECODE_ERRORS, IMAGE_FORMATS

from .errors import InvalidInput

DECODE_ERRORS: tuple[type[Exception], ...] = (*IMAGE_DECODE_ERRORS, Image.DecompressionBombError)


def decode_image(data: bytes) -> Image.Image:
    """RGB pixels; a bad image is the caller's mistake (``InvalidInput``), failing only its request."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            return image.convert("RGB")
    except DECODE_ERRORS as e:
        raise InvalidInput(
            f"the image could not be decoded ({type(e).__name__}): send a PNG, JPEG, WebP or GIF"
        ) from None
