"""What differs between the library releases the sentence-transformers engine runs under, in one place.

The base environment has sentence-transformers 6 and transformers 5; NV-Embed-v2's ``runtime_env``
brings sentence-transformers 3.0.1 and transformers 4.42.4, the only releases its remote code loads
under. Each shim picks by the installed release's public API, or by its version where the API
cannot tell.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import import_module
from importlib.metadata import version
from importlib.util import find_spec
from typing import Any

import torch
from sentence_transformers import SentenceTransformer

DTYPE_KEYWORD_SINCE = (4, 56)


def modules_package() -> str:
    """Where the Dense and Normalize modules live: ``sentence_transformers.sentence_transformer.modules``
    since sentence-transformers 6 (whose old ``sentence_transformers.models`` warns it is deprecated),
    only ``sentence_transformers.models`` in 3."""
    new = "sentence_transformers.sentence_transformer"
    return f"{new}.modules" if find_spec(new) is not None else "sentence_transformers.models"


MODULES_PACKAGE = modules_package()
_MODULES = import_module(MODULES_PACKAGE)
# Any: which classes these are (and so their methods, e.g. Dense.load) depends on the installed release.
Dense: Any = _MODULES.Dense
Normalize: Any = _MODULES.Normalize


def dtype_keyword(transformers_version: str) -> str:
    """The ``from_pretrained`` keyword for the weights' dtype: ``dtype`` since transformers 4.56 (5 keeps
    ``torch_dtype`` for backward compatibility only); 4.42.4 knows ``torch_dtype`` only and hands
    ``dtype`` on to the model's ``__init__``, which fails."""
    major, minor = (int(part) for part in transformers_version.split(".")[:2])
    return "dtype" if (major, minor) >= DTYPE_KEYWORD_SINCE else "torch_dtype"


_DTYPE_KEYWORD = dtype_keyword(version("transformers"))


def model_kwargs(dtype: torch.dtype, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``model_kwargs`` for ``SentenceTransformer``: the weights in ``dtype`` unless the overrides (a
    catalog entry's own ``model_kwargs``) name one as ``dtype``, under the keyword the installed
    transformers takes."""
    kwargs = dict(overrides)
    return {_DTYPE_KEYWORD: kwargs.pop("dtype", dtype), **kwargs}


def embedding_dimension(model: SentenceTransformer) -> int | None:
    """``get_embedding_dimension`` since sentence-transformers 6 (the old name is an alias there);
    3 has ``get_sentence_embedding_dimension`` only."""
    if hasattr(model, "get_embedding_dimension"):
        return model.get_embedding_dimension()
    return model.get_sentence_embedding_dimension()


def preprocess(model: SentenceTransformer, texts: list[str]) -> dict[str, Any]:
    """The model's input features for ``texts``: ``preprocess`` since sentence-transformers 6 (where
    ``tokenize`` warns it is deprecated); 3 has ``tokenize`` only."""
    if hasattr(model, "preprocess"):
        return model.preprocess(texts)
    return model.tokenize(texts)


def weights_dtype(model: SentenceTransformer) -> torch.dtype:
    """The dtype the model's weights loaded in, from its parameters: sentence-transformers 3 has no
    ``dtype`` property (6 does)."""
    return next(model.parameters()).dtype
