"""Images as engines read them: the gateway has already checked the bytes (format, pixel count)."""

from __future__ import annotations

import io

from PIL import Image


def decode_image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")
