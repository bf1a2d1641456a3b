"""candle/engines/embedding/st_compat.py in the base environment (sentence-transformers 6, transformers 5): the
shims take the current API, which names no deprecated one. The other side, sentence-transformers 3.0.1
with transformers 4.42.4, runs in tests/cluster/test_multinode.py under NV-Embed-v2's production pins.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from sentence_transformers import SentenceTransformer

from candle.demo.tiny_models import build_tiny_store
from candle.engines.embedding.st_compat import (
    MODULES_PACKAGE,
    Normalize,
    dtype_keyword,
    embedding_dimension,
    model_kwargs,
    preprocess,
    weights_dtype,
)

TEXTS = ["a cat sits on the mat", "a kitten rests on a rug by the fire"]


@pytest.mark.parametrize(
    ("release", "keyword"),
    [("4.42.4", "torch_dtype"), ("4.55.4", "torch_dtype"), ("4.56.0", "dtype"), ("5.0.0rc1", "dtype")],
)
def test_the_dtype_keyword_follows_the_transformers_release(release: str, keyword: str):
    assert dtype_keyword(release) == keyword


def test_an_entrys_own_dtype_wins_under_the_installed_keyword():
    kwargs = model_kwargs(torch.float32, {"dtype": torch.bfloat16, "attn_implementation": "eager"})
    assert kwargs == {"dtype": torch.bfloat16, "attn_implementation": "eager"}  # transformers 5's keyword


@contextmanager
def notices(caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    """The warnings and log records of the body, filled in when it ends (transformers' own logger does
    not propagate to the root, so caplog listens to it directly)."""
    library = logging.getLogger("transformers")
    library.addHandler(caplog.handler)
    said: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
            warnings.simplefilter("always")
            yield said
    finally:
        library.removeHandler(caplog.handler)
    said.extend([str(w.message) for w in caught] + [record.getMessage() for record in caplog.records])


def test_a_model_loads_in_the_given_dtype_through_the_current_api(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    folder = build_tiny_store(tmp_path, ["minilm"])["minilm"]
    with notices(caplog) as said:
        model = SentenceTransformer(str(folder), device="cpu", model_kwargs=model_kwargs(torch.bfloat16, {}))
        dimension, features = embedding_dimension(model), preprocess(model, TEXTS)
    assert (weights_dtype(model), dimension, features["attention_mask"].shape[0]) == (torch.bfloat16, 384, len(TEXTS))
    assert isinstance(model[-1], Normalize)  # what modules.json's sentence_transformers.models.Normalize loads
    assert not [n for n in said if "deprecated" in n.lower()], said


def test_the_modules_come_from_their_current_package():
    """sentence-transformers 6 still finds Dense and Normalize under ``sentence_transformers.models``,
    with a DeprecationWarning."""
    assert MODULES_PACKAGE == "sentence_transformers.sentence_transformer.modules"
