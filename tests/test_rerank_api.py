"""Rerank and score through the gateway: the demo's tiny cross-encoder on the session's Serve, called
over HTTP as Cohere's, Jina's and vLLM's clients call them, and with Cohere's SDK and LangChain's
Cohere integration unchanged.

Every score is compared with sentence-transformers' ``CrossEncoder.predict`` run here, in-process,
on the same repo the replica fetched from the test hub.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cohere
import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from langchain_cohere import CohereRerank
from langchain_core.documents import Document
from ray import serve
from sentence_transformers import CrossEncoder

from candle.catalog import load_catalog
from candle.contracts import RerankCall
from candle.demo.hub import LocalHub
from candle.jobs import batch
from candle.testing import wait_for_models
from deployments.app import build_gateway_app
from tests.demo_gateways import demo_gateway
from tests.serve_counts import replica_requests

MODEL = "bge-reranker-tiny"
SPEC = load_catalog("demo").get(MODEL)
QUERY = "where does the cat sit?"
DOCUMENTS = [
    "A cat sits on the mat.",
    "Quarterly tax report spreadsheet with revenue, costs and profit for each region.",
    "Two dogs play with a red ball in the park.",
    "The weather is sunny, 24 degrees, light wind from the west.",
    "A kitten rests on a rug.",
    "Ray Serve runs deployments on a cluster.",
]


@pytest.fixture(scope="module")
def base(serve_base: str, hub_server: LocalHub, hub_store: Path) -> Iterator[str]:
    with demo_gateway(serve_base, hub_store, "gateway-ranked", "/ranked", {}, {}) as url:
        yield url


@pytest.fixture(scope="module")
def direct(hub_store: Path) -> CrossEncoder:
    """The demo model as its users would run it in-process."""
    return CrossEncoder(str(hub_store / SPEC.repo_id), device="cpu")


def post(base: str, path: str, body: dict[str, Any], timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{base}{path}", json={"model": MODEL, **body}, timeout=timeout)


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"]), body
    return body["error"]


def test_rerank_scores_are_cross_encoder_predicts(base: str, direct: CrossEncoder):
    answer = post(base, "/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "return_documents": True})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected = direct.predict([(QUERY, document) for document in DOCUMENTS])
    results = body["results"]
    assert sorted(r["index"] for r in results) == list(range(len(DOCUMENTS)))
    assert [r["index"] for r in results] == list(np.argsort(-expected, kind="stable"))
    np.testing.assert_allclose(
        [r["relevance_score"] for r in results], expected[[r["index"] for r in results]], atol=1e-5
    )
    assert [r["document"] for r in results] == [{"text": DOCUMENTS[r["index"]]} for r in results]
    tokens = sum(len(direct.tokenizer(QUERY, document)["input_ids"]) for document in DOCUMENTS)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert body["model"] == MODEL and body["id"].startswith("rerank-")


def test_top_n_and_return_documents_as_cohere_documents_them(base: str, direct: CrossEncoder):
    """``top_n``: the best n, all when absent or larger than the list; ``return_documents``: false by
    default (index and score only), else each result's ``document.text``. Documents may be objects with
    ``text``; ``/rerank`` and ``/v2/rerank`` answer alike."""
    expected = direct.predict([(QUERY, document) for document in DOCUMENTS])
    best = list(np.argsort(-expected, kind="stable"))
    everything = post(base, "/v1/rerank", {"query": QUERY, "documents": DOCUMENTS}).json()["results"]
    assert [r["index"] for r in everything] == best and all(set(r) == {"index", "relevance_score"} for r in everything)
    two = post(base, "/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "top_n": 2}).json()["results"]
    assert [r["index"] for r in two] == best[:2]
    more = post(base, "/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "top_n": 100}).json()["results"]
    assert [r["index"] for r in more] == best
    objects = [{"text": document, "title": f"doc {i}"} for i, document in enumerate(DOCUMENTS)]
    for path in ("/rerank", "/v2/rerank"):
        body = {"query": QUERY, "documents": objects, "top_n": 3, "return_documents": True}
        answer = post(base, path, body).json()["results"]
        assert [(r["index"], r["document"]["text"]) for r in answer] == [(i, DOCUMENTS[i]) for i in best[:3]]
        np.testing.assert_allclose([r["relevance_score"] for r in answer], expected[best[:3]], atol=1e-5)


def test_score_takes_vllms_pairings(base: str, direct: CrossEncoder):
    """One ``text_1`` against one or many ``text_2``, or pairwise lists; scores in the pairs' order."""
    one = post(base, "/v1/score", {"text_1": QUERY, "text_2": DOCUMENTS[0]}).json()
    assert one["object"] == "list" and one["data"][0]["object"] == "score"
    np.testing.assert_allclose(one["data"][0]["score"], direct.predict([(QUERY, DOCUMENTS[0])])[0], atol=1e-5)
    many = post(base, "/v1/score", {"text_1": [QUERY], "text_2": DOCUMENTS}).json()
    assert [d["index"] for d in many["data"]] == list(range(len(DOCUMENTS)))
    np.testing.assert_allclose(
        [d["score"] for d in many["data"]], direct.predict([(QUERY, d) for d in DOCUMENTS]), atol=1e-5
    )
    queries = [f"question {i}: {QUERY}" for i in range(len(DOCUMENTS))]
    pairwise = post(base, "/score", {"text_1": queries, "text_2": DOCUMENTS}).json()
    np.testing.assert_allclose(
        [d["score"] for d in pairwise["data"]], direct.predict(list(zip(queries, DOCUMENTS, strict=True))), atol=1e-5
    )
    tokens = sum(len(direct.tokenizer(q, d)["input_ids"]) for q, d in zip(queries, DOCUMENTS, strict=True))
    assert pairwise["usage"]["prompt_tokens"] == tokens
    mismatched = post(base, "/v1/score", {"text_1": queries[:2], "text_2": DOCUMENTS})
    assert mismatched.status_code == 400 and "text_1 has 2 texts and text_2 6" in error_of(mismatched)["message"]
    for pairing in ({"text_1": QUERY, "text_2": DOCUMENTS}, {"text_1": queries, "text_2": DOCUMENTS}):
        unknown = post(base, "/v1/score", {**pairing, "prompt_name": "nope"})
        assert unknown.status_code == 400 and "unknown prompt_name 'nope'" in error_of(unknown)["message"], pairing


def test_bad_rerank_requests_are_openai_errors(base: str):
    limit = SPEC.limits.max_input_items
    cases = [
        ({"query": QUERY, "documents": ["a"] * (limit + 1)}, 400, f"documents must have at most {limit} items"),
        ({"query": QUERY, "documents": ["a"] * 2049}, 400, "at most 2048 items are allowed here, got 2049"),
        ({"query": QUERY, "documents": ["x" * 60_000, "y" * 60_000]}, 413, "longer than 100000 characters"),
        ({"query": "q" * 1000, "documents": ["x"] * 100}, 413, "(got 100100)"),  # the query, once per document
        ({"query": QUERY, "documents": []}, 400, "at least 1 item"),
        ({"query": "", "documents": DOCUMENTS}, 400, "at least 1 character"),
        ({"query": QUERY, "documents": [{"title": "no text"}]}, 400, "documents.0"),
        ({"query": QUERY, "documents": DOCUMENTS, "top_n": 0}, 400, "top_n"),
        ({"query": QUERY, "documents": DOCUMENTS, "rank_fields": ["title"]}, 400, "rank_fields is not supported"),
        ({"query": QUERY, "documents": DOCUMENTS, "max_chunks_per_doc": 10}, 400, "max_chunks_per_doc is not"),
        ({"query": QUERY, "documents": DOCUMENTS, "prompt_name": "nope"}, 400, "unknown prompt_name 'nope'"),
    ]
    for body, status, message in cases:
        answer = post(base, "/v1/rerank", body)
        assert answer.status_code == status and message in error_of(answer)["message"], (body, answer.text)
    unknown = httpx.post(f"{base}/v1/rerank", json={"model": "gpt-9", "query": QUERY, "documents": DOCUMENTS})
    assert unknown.status_code == 404 and error_of(unknown)["code"] == "model_not_found"
    embedder = httpx.post(f"{base}/v1/rerank", json={"model": "all-minilm-l6-v2", "query": "q", "documents": ["d"]})
    assert embedder.status_code == 400 and "/v1/rerank" in error_of(embedder)["message"]


def test_a_thousand_short_documents_answer_within_the_queue_budget(base: str, direct: CrossEncoder):
    """The client waits no longer than the model's queue budget: past it the gateway would have refused."""
    documents = [f"document {i}: a cat sits on the mat" if i % 7 == 0 else f"note {i} about taxes" for i in range(1000)]
    budget = SPEC.limits.queue_latency_budget_s
    answer = post(base, "/v1/rerank", {"query": QUERY, "documents": documents, "top_n": 10}, timeout=budget)
    assert answer.status_code == 200, answer.text
    expected = direct.predict([(QUERY, document) for document in documents])
    results = answer.json()["results"]
    assert [r["index"] for r in results] == list(np.argsort(-expected, kind="stable")[:10])
    np.testing.assert_allclose([r["relevance_score"] for r in results], np.sort(expected)[::-1][:10], atol=1e-5)


def test_rerank_many_answers_each_call_or_its_own_error(base: str, direct: CrossEncoder):
    """What a coalescing caller (a batch job, the gateway's /v1/score) gets from one replica request:
    per call its scores or its exception, a bad call failing alone."""
    handle = serve.get_deployment_handle("Rerank", app_name=MODEL)
    good = RerankCall(QUERY, tuple(DOCUMENTS[:3]))
    cut = RerankCall(QUERY, (" ".join(["cat"] * 40),), max_tokens_per_doc=5)
    bad = RerankCall(QUERY, tuple(DOCUMENTS[:2]), prompt_name="nope")
    first, second, failed = handle.rerank_many.remote([good, cut, bad]).result(timeout_s=60)
    np.testing.assert_allclose(first[0], direct.predict([(QUERY, d) for d in DOCUMENTS[:3]]), atol=1e-5)
    np.testing.assert_allclose(second[0], direct.predict([(QUERY, " ".join(["cat"] * 5))]), atol=1e-5)
    assert isinstance(failed, ValueError) and "unknown prompt_name 'nope'" in str(failed)


def test_cohere_sdk_and_langchain_rerank_against_candle(base: str, direct: CrossEncoder):
    """Cohere's own clients, pointed at candle's base URL (v1's ``Client``, v2's ``ClientV2``), and
    LangChain's Cohere document compressor, which uses ``ClientV2``: unchanged code."""
    expected = direct.predict([(QUERY, document) for document in DOCUMENTS])
    best = list(np.argsort(-expected, kind="stable"))
    v1 = cohere.Client(api_key="unused", base_url=base).rerank(
        model=MODEL, query=QUERY, documents=DOCUMENTS, top_n=3, return_documents=True
    )
    assert [(r.index, r.document.text) for r in v1.results] == [(i, DOCUMENTS[i]) for i in best[:3]]
    np.testing.assert_allclose([r.relevance_score for r in v1.results], expected[best[:3]], atol=1e-5)
    v2 = cohere.ClientV2(api_key="unused", base_url=base).rerank(model=MODEL, query=QUERY, documents=DOCUMENTS)
    assert [r.index for r in v2.results] == best

    compressor = CohereRerank(model=MODEL, base_url=base, cohere_api_key="unused", top_n=2)
    documents = [Document(page_content=text, metadata={"source": i}) for i, text in enumerate(DOCUMENTS)]
    kept = compressor.compress_documents(documents, QUERY)
    assert [d.metadata["source"] for d in kept] == best[:2]
    np.testing.assert_allclose([d.metadata["relevance_score"] for d in kept], expected[best[:2]], atol=1e-5)


def test_the_openapi_schema_documents_rerank_and_score(base: str):
    schema = httpx.get(f"{base}/openapi.json").json()
    for path in ("/v1/rerank", "/v2/rerank", "/rerank", "/v1/score", "/score"):
        operation = schema["paths"][path]["post"]
        assert {"200", "400", "404", "413", "503"} <= set(operation["responses"]), path
    rerank = schema["components"]["schemas"]["RerankRequest"]
    assert {"model", "query", "documents"} == set(rerank["required"])
    assert {"top_n", "return_documents", "max_tokens_per_doc"} <= set(rerank["properties"])
    assert {"model", "text_1", "text_2"} == set(schema["components"]["schemas"]["ScoreRequest"]["required"])


@pytest.mark.parametrize(("via", "suffix"), [("serve", ".jsonl"), ("actors", ".parquet")])
def test_the_batch_job_ranks_rows(base: str, direct: CrossEncoder, tmp_path: Path, via: str, suffix: str):
    """Rerank rows through the running deployment and through the replica's own code in an actor: each
    row's ``results`` as the HTTP answer gives them; a bad row goes to the errors file alone."""
    rows = [
        {"id": "plain", "query": QUERY, "documents": DOCUMENTS},
        {"id": "two", "query": "a report on taxes", "documents": DOCUMENTS, "top_n": 2, "return_documents": True},
        {"id": "bad", "query": QUERY, "documents": []},
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = tmp_path / f"out{suffix}"
    args = ["--catalog", "demo", "--model", MODEL, "--via", via, "--concurrency", "1"]
    summary = batch.run(
        batch.build_parser().parse_args([*args, "--input", str(tmp_path / "in.jsonl"), "--output", str(output)])
    )
    assert (summary.computed, summary.failed) == (3, 1)  # computed counts every row it ran, failed ones too
    records = (
        pq.read_table(output).to_pylist() if suffix == ".parquet" else map(json.loads, output.read_text().splitlines())
    )
    got = {record["id"]: record["results"] for record in records}
    for row in rows[:2]:
        expected = direct.predict([(row["query"], document) for document in DOCUMENTS])
        best = list(np.argsort(-expected, kind="stable"))[: row.get("top_n")]
        assert [r["index"] for r in got[row["id"]]] == best
        np.testing.assert_allclose([r["relevance_score"] for r in got[row["id"]]], expected[best], atol=1e-5)
    assert [r["document"]["text"] for r in got["two"]] == [DOCUMENTS[i] for i in best]
    (error,) = map(json.loads, (tmp_path / "out.errors.jsonl").read_text().splitlines())
    assert error["id"] == "bad" and "documents" in error["error"]


@pytest.fixture(scope="module")
def roomy(base: str, serve_base: str) -> Iterator[str]:
    """A gateway whose reranker entry takes requests of a million characters (the demo's takes 100,000),
    so one request keeps the tiny replica busy for seconds; the same model app, the same replica."""
    entry = SPEC.model_dump(mode="json", exclude_defaults=True)
    entry["limits"] = {**entry.get("limits", {}), "max_input_chars": 1_000_000}
    gateway = build_gateway_app({"catalog": {"models": [entry]}})
    serve.run(gateway, name="gateway-ranked-roomy", route_prefix="/ranked-roomy", blocking=False)
    url = f"{serve_base}/ranked-roomy"
    try:
        wait_for_models(url, {MODEL: "ready"}, 300)
        yield url
    finally:
        serve.delete("gateway-ranked-roomy", _blocking=False)


def test_concurrent_rerank_requests_become_one_replica_call(
    roomy: str, ray_cluster: dict[str, str], direct: CrossEncoder
):
    """As embeddings do: while two requests of 1,000 long documents keep the reranker busy, 16 small
    requests wait in the gateway and reach the replica as one list: 18 requests, 3 replica calls,
    each small one still scored as on its own."""
    metrics = ray_cluster["METRICS_URL"]
    before = replica_requests(metrics, MODEL)
    many = [f"document {n}: " + "cats and dogs sit on mats, " * 30 for n in range(1000)]
    sent: list[float] = []
    long_done: list[float] = []

    def rank(documents: list[str]) -> httpx.Response:
        sent.append(time.monotonic())
        response = post(roomy, "/v1/rerank", {"query": QUERY, "documents": documents}, timeout=300)
        if len(documents) == len(many):
            long_done.append(time.monotonic())
        return response

    small = [DOCUMENTS[i % 5 : i % 5 + 2] for i in range(16)]
    with ThreadPoolExecutor(18) as pool:
        long_ones = [pool.submit(rank, many) for _ in range(2)]
        time.sleep(0.5)  # both long requests are out: two lists at a time per replica
        del sent[:]
        answers = list(pool.map(rank, small))
        assert [f.result().status_code for f in long_ones] == [200, 200], long_ones[0].result().text
    assert max(sent) < min(long_done), "a long request was answered before every small one was sent"
    assert [a.status_code for a in answers] == [200] * 16
    assert replica_requests(metrics, MODEL) - before == 3
    for documents, answer in zip(small, answers, strict=True):
        expected = direct.predict([(QUERY, document) for document in documents])
        scores = {r["index"]: r["relevance_score"] for r in answer.json()["results"]}
        np.testing.assert_allclose([scores[i] for i in range(len(documents))], expected, atol=1e-5)
