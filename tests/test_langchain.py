"""LangChain's OpenAI integrations (``langchain-openai``) against the demo gateway (issue 15).

``with_structured_output(..., method="json_schema", strict=True)`` on the tiny random chat model
can only come back as a valid instance through constrained decoding; ``OpenAIEmbeddings`` must
give MiniLM's own vectors (``check_embedding_ctx_length=False``: raw text, no tiktoken download).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from pydantic import BaseModel, ConfigDict, Field

from candle.demo.hub import LocalHub
from candle.demo.tiny_models import TINY_MODELS
from tests.demo_gateways import demo_gateway

TEXTS = ["a verified download", "the cat sat on the mat", "quarterly tax report"]


class Forecast(BaseModel):
    """Every value bounded (enums, an integer range), so the answer ends well inside max_tokens."""

    model_config = ConfigDict(extra="forbid")

    sky: Literal["clear", "cloudy", "rain"]
    celsius: int = Field(ge=-20, le=40)
    windy: bool


@pytest.fixture(scope="module")
def base(serve_base: str, hub_server: LocalHub, hub_store: Path) -> Iterator[str]:
    with demo_gateway(serve_base, hub_store, "gateway-langchain", "/langchain", {}, {}) as url:
        yield f"{url}/v1"


def test_with_structured_output_returns_a_valid_instance(base: str) -> None:
    chat = ChatOpenAI(model="qwen3-coder-tiny", base_url=base, api_key="unused", max_tokens=128, max_retries=0)
    forecast = chat.with_structured_output(Forecast, method="json_schema", strict=True).invoke("Tomorrow's weather?")
    assert isinstance(forecast, Forecast)


def test_openai_embeddings_equal_sentence_transformers(base: str, hub_store: Path) -> None:
    from sentence_transformers import SentenceTransformer

    embeddings = OpenAIEmbeddings(
        model="all-minilm-l6-v2", base_url=base, api_key="unused", check_embedding_ctx_length=False, max_retries=0
    )
    served = np.array(embeddings.embed_documents(TEXTS))
    query = np.array(embeddings.embed_query(TEXTS[0]))
    local = SentenceTransformer(str(hub_store / TINY_MODELS["minilm"]), device="cpu").encode(TEXTS)

    def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))

    assert served.shape == (3, 384)
    assert cosine(served, local).min() >= 0.999
    assert cosine(query, local[0]) >= 0.999
