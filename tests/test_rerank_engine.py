"""The rerank engine in-process (no Ray): cross-encoders and an LLM reranker from the tiny store.

Scores are compared with sentence-transformers' ``CrossEncoder.predict`` run here on the same repo,
and the LLM reranker's with its model card's own recipe (the prompt written out, ``P(yes)`` from
the last position's ``yes`` and ``no`` logits), computed with transformers alone.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder
from transformers import AutoModelForCausalLM, AutoTokenizer

from candle.catalog import ModelSpec
from candle.demo.tiny_models import TINY_MODELS, build_tiny_store
from candle.engines import load_engine
from candle.engines.device import gpu_count
from candle.engines.errors import InvalidInput
from candle.engines.rerank.sentence_transformers import CrossEncoderEngine

pytestmark = pytest.mark.skipif(gpu_count() > 0, reason="exact CPU fp32 scores; the GPU loads bf16")

QUERY = "where does the cat sit?"
DOCUMENTS = [
    "A cat sits on the mat.",
    "Quarterly tax report spreadsheet with revenue, costs and profit.",
    "Two dogs play with a red ball in the park.",
    "The weather is sunny, 24 degrees, light wind from the west.",
]
PAIRS = [(QUERY, document) for document in DOCUMENTS]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_tiny_store(
        tmp_path_factory.mktemp("rerank-store"), ["bge_reranker", "jina_reranker_v2", "qwen3_reranker"]
    )


def engine(folder: Path, name: str, **fields: Any) -> CrossEncoderEngine:
    spec = ModelSpec(name=name, capability="rerank", repo_id=TINY_MODELS[name], **fields)
    loaded = load_engine(spec, folder)
    assert isinstance(loaded, CrossEncoderEngine)
    return loaded


@pytest.mark.parametrize(("name", "remote_code"), [("bge_reranker", False), ("jina_reranker_v2", True)])
def test_scores_are_cross_encoder_predicts(store: dict[str, Path], name: str, remote_code: bool):
    served = engine(store[name], name, trust_remote_code=remote_code)
    scores, tokens = served.score_pairs(PAIRS)
    direct = CrossEncoder(str(store[name]), device="cpu", trust_remote_code=remote_code)
    np.testing.assert_allclose(scores, direct.predict(PAIRS), atol=1e-5)
    assert scores.dtype == np.float32 and len(set(np.round(scores, 3))) == len(PAIRS)  # no ties to hide behind
    assert tokens == [len(direct.tokenizer(query, document)["input_ids"]) for query, document in PAIRS]
    if remote_code:  # the repo's own code ran, not transformers' XLM-R
        assert type(served.model.model).__module__.startswith("transformers_modules.")


def test_max_tokens_per_doc_cuts_each_document_to_its_first_tokens(store: dict[str, Path]):
    served = engine(store["bge_reranker"], "bge_reranker")
    direct = CrossEncoder(str(store["bge_reranker"]), device="cpu")
    long = " ".join(["cat"] * 40)  # "▁cat" is one token of the tiny vocab
    assert len(direct.tokenizer(long, add_special_tokens=False)["input_ids"]) == 40
    short = "a dog"
    scores, tokens = served.score_pairs([(QUERY, long), (QUERY, short)], max_tokens_per_doc=10)
    expected = direct.predict([(QUERY, " ".join(["cat"] * 10)), (QUERY, short)])
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert tokens[0] == len(direct.tokenizer(QUERY, " ".join(["cat"] * 10))["input_ids"])
    whole, _ = served.score_pairs([(QUERY, long)])
    assert abs(whole[0] - scores[0]) > 1e-4  # the cut changed what the model read


def test_a_prompt_is_the_entrys_and_an_unknown_one_is_refused(store: dict[str, Path]):
    prompts = {"search": "Represent this query for searching: "}
    served = engine(store["bge_reranker"], "bge_reranker", prompts=prompts)
    direct = CrossEncoder(str(store["bge_reranker"]), device="cpu", prompts=prompts)
    scores, _ = served.score_pairs(PAIRS, prompt_name="search")
    np.testing.assert_allclose(scores, direct.predict(PAIRS, prompt_name="search"), atol=1e-5)
    assert not np.allclose(scores, served.score_pairs(PAIRS)[0], atol=1e-4)
    with pytest.raises(InvalidInput, match=r"unknown prompt_name 'nope'; this model knows \['search'\]"):
        served.score_pairs(PAIRS, prompt_name="nope")
    by_default = engine(
        store["bge_reranker"], "bge_reranker", prompts=prompts, engine_args={"default_prompt_name": "search"}
    )
    np.testing.assert_allclose(by_default.score_pairs(PAIRS)[0], scores, atol=1e-5)
    assert by_default.score_pairs(PAIRS)[1] == served.score_pairs(PAIRS, prompt_name="search")[1]


def model_card_scores(folder: Path, instruction: str, pairs: list[tuple[str, str]]) -> np.ndarray:
    """Qwen3-Reranker's recipe as its model card writes it, with transformers alone."""
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    prefix = (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
        'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
    )
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    texts = [f"{prefix}<Instruct>: {instruction}\n<Query>: {q}\n<Document>: {d}{suffix}" for q, d in pairs]
    inputs = tokenizer(texts, padding=True, return_tensors="pt")
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    with torch.inference_mode():
        last = model(**inputs).logits[:, -1, :]
    return torch.log_softmax(torch.stack([last[:, no], last[:, yes]], dim=1), dim=1)[:, 1].exp().numpy()


def test_an_llm_reranker_scores_p_yes_as_its_model_card_does(store: dict[str, Path]):
    instruction = "Given a question about animals, find where they are"
    served = engine(store["qwen3_reranker"], "qwen3_reranker", prompts={"animals": instruction})
    scores, tokens = served.score_pairs(PAIRS, prompt_name="animals")
    np.testing.assert_allclose(scores, model_card_scores(store["qwen3_reranker"], instruction, PAIRS), atol=1e-5)
    default = "Given a web search query, retrieve relevant passages that answer the query"
    np.testing.assert_allclose(
        served.score_pairs(PAIRS)[0], model_card_scores(store["qwen3_reranker"], default, PAIRS), atol=1e-5
    )
    assert all(t > 40 for t in tokens)  # the template's prompt counts: the model read it


def test_an_engine_let_go_is_freed_in_process(store: dict[str, Path]):
    """A replica replaced in its process (scale-down, redeploy) frees its model by dropping the engine:
    nothing (a cache, a registry, a cycle held by the library) keeps its weights alive."""
    served = engine(store["bge_reranker"], "bge_reranker")
    served.score_pairs(PAIRS)
    weights = weakref.ref(next(served.model.parameters()))
    del served
    gc.collect()
    assert weights() is None
