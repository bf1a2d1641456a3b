"""Rerank and score bodies fuzzed (hypothesis): whatever a client sends is refused with an OpenAI
error, or becomes calls inside the model's limits; never anything else. No Ray: the API layer alone."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from candle.api import calls
from candle.api.errors import APIError
from candle.api.schemas import RerankRequest, ScoreRequest
from candle.catalog import ModelSpec
from candle.catalog.schema import MAX_INPUT_ITEMS

SPEC = ModelSpec(
    name="ranker",
    capability="rerank",
    repo_id="candle-tiny/bge-reranker-v2-m3",
    limits={"max_input_items": 8, "max_input_chars": 400},
)
text = st.text(max_size=60)
document = st.one_of(text, st.fixed_dictionaries({"text": text}), st.fixed_dictionaries({"title": text}), st.integers())
maybe_int = st.one_of(st.none(), st.integers(min_value=-3, max_value=20))


def pairs_read(call_list: list[Any]) -> tuple[int, int]:
    """Pairs and characters the model would read for these calls."""
    pairs = sum(len(call.documents) for call in call_list)
    chars = sum(len(call.query) * len(call.documents) + sum(map(len, call.documents)) for call in call_list)
    return pairs, chars


@settings(max_examples=300, deadline=None)
@given(
    query=text,
    documents=st.one_of(st.lists(document, max_size=12), text, st.none()),
    top_n=maybe_int,
    cut=maybe_int,
    extra=st.dictionaries(
        st.sampled_from(["rank_fields", "max_chunks_per_doc", "return_documents"]),
        st.one_of(st.none(), st.integers(0, 3), st.lists(text, max_size=2)),
    ),
)
def test_a_rerank_body_is_refused_or_bounded(query: str, documents: Any, top_n: Any, cut: Any, extra: dict) -> None:
    body = {"model": "ranker", "query": query, "documents": documents, "top_n": top_n, "max_tokens_per_doc": cut}
    try:
        request = RerankRequest.model_validate(body | extra)
        call = calls.rerank_call(request, SPEC)
    except ValidationError as e:
        assert e.errors(), "a refusal says what is wrong"
        return
    except APIError as e:
        assert e.status in (400, 413) and e.param == "documents"
        return
    pairs, chars = pairs_read([call])
    assert 1 <= pairs <= SPEC.limits.max_input_items and chars <= SPEC.limits.max_input_chars
    assert call.query and call.max_tokens_per_doc == cut and (top_n is None or top_n >= 1)
    assert not extra.get("rank_fields") and extra.get("max_chunks_per_doc") is None  # refused by name, not ignored
    assert list(call.documents) == [d if isinstance(d, str) else d["text"] for d in documents]


@settings(max_examples=300, deadline=None)
@given(
    firsts=st.one_of(text, st.lists(text, max_size=10)),
    seconds=st.one_of(text, st.lists(text, max_size=10)),
)
def test_a_score_body_pairs_one_to_many_or_pairwise(firsts: Any, seconds: Any) -> None:
    """vLLM's rule: one text_1 against each text_2, or lists of one length paired in order."""
    n1 = 1 if isinstance(firsts, str) else len(firsts)
    n2 = 1 if isinstance(seconds, str) else len(seconds)
    try:
        request = ScoreRequest.model_validate({"model": "ranker", "text_1": firsts, "text_2": seconds})
        made = calls.score_calls(request, SPEC)
    except ValidationError:
        assert n1 == 0 or n2 == 0 or (n1 > 1 and n1 != n2)
        return
    except APIError as e:
        assert e.status in (400, 413) and e.param == "text_2"
        chars = sum(len(a) + len(b) for a, b in made_pairs(firsts, seconds))
        assert n2 > SPEC.limits.max_input_items or chars > SPEC.limits.max_input_chars
        return
    assert n1 == 1 or n1 == n2
    pairs, chars = pairs_read(made)
    assert pairs == n2 <= SPEC.limits.max_input_items and chars <= SPEC.limits.max_input_chars
    assert [(c.query, d) for c in made for d in c.documents] == made_pairs(firsts, seconds)


def made_pairs(firsts: Any, seconds: Any) -> list[tuple[str, str]]:
    ones = [firsts] if isinstance(firsts, str) else firsts
    twos = [seconds] if isinstance(seconds, str) else seconds
    return [(ones[0], t) for t in twos] if len(ones) == 1 else list(zip(ones, twos, strict=True))


@pytest.mark.parametrize("field", ["documents", "text_2"])
def test_a_huge_list_is_refused_before_its_items_are_read(field: str) -> None:
    """Counted first: 100,000 malformed items give one error naming the count, not 100,000 errors."""
    items = [{"not": "text"}] * 100_000
    body = {"model": "ranker", "query": "q", "documents": items, "text_1": "q", "text_2": items}
    schema = RerankRequest if field == "documents" else ScoreRequest
    with pytest.raises(ValidationError) as refused:
        schema.model_validate(body)
    assert refused.value.error_count() == 1
    assert f"at most {MAX_INPUT_ITEMS} items are allowed here, got 100000" in str(refused.value)
