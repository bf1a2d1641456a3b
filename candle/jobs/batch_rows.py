"""What a batch row holds and what becomes of it: the engine's input, and the output or error record.

Kept apart from the job's driver so the workers' code (which Ray ships to actors) imports no more
than it needs. Records are JSON text: the same for every capability, written as they are to JSONL.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import numpy as np

from candle.raycluster import error_line

EMBEDDING_CAPABILITIES = ("text-embedding", "image-embedding")
DATA_URL_PREFIX = "data:image/"


def embedding_item(capability: str, row: Any) -> str | bytes:
    """The text (or, for image embeddings, an image data URL's bytes) to embed; ValueError if none."""
    item = row.get("input") if isinstance(row, dict) else None
    if not isinstance(item, str) or not item:
        raise ValueError("the row has no 'input' text")
    if capability == "image-embedding" and item.startswith(DATA_URL_PREFIX):
        try:
            return base64.b64decode(item.partition(",")[2], validate=True)
        except binascii.Error as e:
            raise ValueError("the row's image data URL is not valid base64") from e
    return item


def row_id(row: Any) -> Any:
    return row.get("id") if isinstance(row, dict) else None


def success_record(row: dict[str, Any], vector: np.ndarray) -> str:
    return json.dumps({"id": row_id(row), "embedding": [float(x) for x in vector]})


def error_record(row: Any, error: BaseException) -> str:
    return json.dumps({"id": row_id(row), "error": error_line(error)})
