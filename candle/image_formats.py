"""The images candle reads, shared by the API layer (which checks what clients send) and the engines
(which decode it): one list of formats, one list of what their decoders raise. PIL only, no torch."""

from __future__ import annotations

import struct

# The image formats candle reads (PIL's names): the gateway checks clients' images against them and
# replicas decode with nothing else, so no other PIL plugin (EPS runs Ghostscript) ever sees input.
IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF")
# What PIL's decoders raise on malformed input: OSError (truncation, unknown formats) and the rest.
IMAGE_DECODE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
)
