"""The OpenAI-compatible API end to end: real Ray Serve apps of the demo catalog, called with the OpenAI SDK.

Every model replica fetches its weights from the test hub through the download service, as in
production; the gateway runs on a free loopback port.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from openai.types.chat import ChatCompletion
from PIL import Image
from ray import serve
from ray.serve.api import RunTarget
from transformers import AutoConfig, AutoTokenizer

from candle.catalog import load_catalog
from candle.demo.hub import LocalHub
from candle.demo.tiny_models import TINY_MODELS, build_tiny_store
from candle.testing import catalog_apps, wait_for_models
from deployments.app import build_gateway_app, build_model_app
from tests.cut_streams import assert_leaving_ends_generation, candle_tokens
from tests.serve_counts import replica_requests

DEMO = load_catalog("demo")
API_KEY = "sk-candle-test-key-0123456789"
SLOW_REPO = "slow/all-minilm-l6-v2"
READY_TIMEOUT_S = 600


def data_url(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buffer.getvalue()).decode()}"


@pytest.fixture(scope="session")
def api(serve_base: str, hub_server: LocalHub, hub_store: Path) -> str:
    """The demo catalog deployed as in serve_config: one app per model, the gateway at '/'."""
    build_tiny_store(hub_store)
    minilm = hub_store / TINY_MODELS["minilm"]
    slow = hub_store / SLOW_REPO
    slow.parent.mkdir(parents=True, exist_ok=True)
    if not slow.exists():
        import shutil

        shutil.copytree(minilm, slow)
    apps = [
        RunTarget(build_model_app({"catalog": "demo", "model": m.name}), name=m.name, route_prefix=None)
        for m in DEMO.models
    ]
    apps.append(
        RunTarget(build_gateway_app({"catalog": "demo", "gateway": {"max_body_bytes": 4_000_000}}), name="gateway")
    )
    secure = {"catalog": "demo", "models": ["all-minilm-l6-v2"], "gateway": {"api_keys": [API_KEY]}}
    apps.append(RunTarget(build_gateway_app(secure), name="gateway-secure", route_prefix="/secure"))
    serve.run_many(apps, wait_for_applications_running=False)
    wait_for_models(serve_base, {m.name: "ready" for m in DEMO.models}, READY_TIMEOUT_S)
    return serve_base


@pytest.fixture(scope="session")
def client(api: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api}/v1", api_key="unused", max_retries=0, timeout=120)


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"]), body
    return body["error"]


# -- models ----------------------------------------------------------------------------------


def test_models_list_every_capability_ready(client: openai.OpenAI, api: str):
    listing = httpx.get(f"{api}/v1/models").json()["data"]
    assert {m["id"]: m["capability"] for m in listing} == {m.name: m.capability for m in DEMO.models}
    assert all(m["status"]["state"] == "ready" and m["object"] == "model" for m in listing)
    assert [m.id for m in client.models.list()] == [m.name for m in DEMO.models]


# -- text ------------------------------------------------------------------------------------

CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Write a function."}]


def test_chat_completion_and_its_stream_agree(client: openai.OpenAI):
    whole = client.chat.completions.create(model="qwen3-coder-tiny", messages=CHAT, max_tokens=12, temperature=0)
    assert whole.object == "chat.completion"
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.prompt_tokens > 0 and 0 < whole.usage.completion_tokens <= 12

    stream = client.chat.completions.create(
        model="qwen3-coder-tiny",
        messages=CHAT,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2  # really streamed
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_tools_reach_the_chat_template_unless_tool_choice_is_none(client: openai.OpenAI):
    kwargs = {"model": "qwen3-coder-tiny", "max_tokens": 4, "temperature": 0}
    plain = client.chat.completions.create(messages=CHAT, **kwargs)
    with_tools = client.chat.completions.create(messages=CHAT, tools=[WEATHER_TOOL], **kwargs)
    hidden = client.chat.completions.create(messages=CHAT, tools=[WEATHER_TOOL], tool_choice="none", **kwargs)
    assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens + 20  # the tool's JSON schema is in the prompt
    assert hidden.usage.prompt_tokens == plain.usage.prompt_tokens
    # No tool-call parser on the CPU engine: the turn ends as text.
    assert with_tools.choices[0].message.tool_calls is None
    assert with_tools.choices[0].finish_reason in ("stop", "length")

    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    history = [
        *CHAT,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "4 degrees, rain"},
    ]
    answer = client.chat.completions.create(messages=history, tools=[WEATHER_TOOL], **kwargs)
    assert answer.usage.prompt_tokens > with_tools.usage.prompt_tokens  # the tool result was read


def _history_prompt_tokens(client: openai.OpenAI, arguments: str) -> int:
    """Prompt tokens of a conversation whose assistant turn called get_weather with ``arguments`` (as
    the SDK sends them: a JSON string)."""
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    history = [*CHAT, {"role": "assistant", "content": None, "tool_calls": [call]}]
    answer = client.chat.completions.create(
        model="qwen3-coder-tiny", messages=history, tools=[WEATHER_TOOL], max_tokens=1, temperature=0
    )
    return answer.usage.prompt_tokens


def test_earlier_tool_calls_reach_the_template_with_their_arguments_as_objects(client: openai.OpenAI):
    """Chat templates iterate a call's arguments as a mapping (Qwen3-Coder's does); the SDK sends a JSON string."""
    short = _history_prompt_tokens(client, '{"city": "Oslo"}')
    longer = _history_prompt_tokens(client, '{"city": "Oslo", "country": "Norway", "units": "metric"}')
    assert longer > short  # each argument is rendered
    # Arguments a model once produced broken stay in the history of every later turn: rendered as no
    # arguments (as vLLM does) rather than failing the conversation from then on.
    assert _history_prompt_tokens(client, '{"city": "Os') == _history_prompt_tokens(client, "{}")
    assert _history_prompt_tokens(client, "[1, 2]") == _history_prompt_tokens(client, "")


def test_chat_n_and_seed_sampling(client: openai.OpenAI):
    def answer(seed: int, temperature: float = 1.0, n: int = 1) -> list[str]:
        kwargs = {"model": "qwen3-coder-tiny", "messages": CHAT, "max_tokens": 8}
        result = client.chat.completions.create(n=n, temperature=temperature, seed=seed, **kwargs)
        assert [c.index for c in result.choices] == list(range(n))
        return [c.message.content for c in result.choices]

    first = answer(7, n=2)
    assert answer(7) == first[:1]  # the seed fixes the sample
    assert answer(8) != first[:1]  # sampled: another seed, another answer
    assert answer(7, temperature=0) == answer(8, temperature=0)  # greedy: the seed has nothing to draw


def test_stop_strings_cut_the_output(client: openai.OpenAI):
    greedy = client.completions.create(model="qwen3-coder-tiny", prompt="def add(a, b):", max_tokens=16, temperature=0)
    text = greedy.choices[0].text
    assert len(text) > 4
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = client.completions.create(
        model="qwen3-coder-tiny", prompt="def add(a, b):", max_tokens=16, temperature=0, stop=[stop]
    )
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_a_client_leaving_a_stream_ends_its_generation(api: str, ray_cluster: dict[str, str]):
    tokens = candle_tokens(ray_cluster["METRICS_URL"], "qwen3-coder-tiny")
    assert_leaving_ends_generation(f"{api}/v1/chat/completions", {}, "qwen3-coder-tiny", tokens)


def test_completions_stream(client: openai.OpenAI):
    whole = client.completions.create(model="qwen3-coder-tiny", prompt=["x = ", "y = "], max_tokens=6, temperature=0)
    assert [c.index for c in whole.choices] == [0, 1]
    streamed = list(
        client.completions.create(model="qwen3-coder-tiny", prompt="x = ", max_tokens=6, temperature=0, stream=True)
    )
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text


# -- embeddings ------------------------------------------------------------------------------


def cos(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_minilm_embeddings_are_semantic(client: openai.OpenAI):
    texts = ["a cat sits on the mat", "a kitten rests on a rug", "quarterly tax report spreadsheet"]
    result = client.embeddings.create(model="all-minilm-l6-v2", input=texts)
    cat, kitten, tax = (d.embedding for d in result.data)
    assert len(cat) == 384
    assert cos(cat, kitten) > cos(cat, tax) + 0.2
    assert result.usage.prompt_tokens > len(texts)


def test_embedding_dimensions_and_base64(client: openai.OpenAI, api: str):
    short = client.embeddings.create(model="all-minilm-l6-v2", input="hello world", dimensions=64)
    assert len(short.data[0].embedding) == 64
    assert abs(np.linalg.norm(short.data[0].embedding) - 1) < 1e-4
    raw = httpx.post(
        f"{api}/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "hello world", "encoding_format": "base64"}
    ).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    full = client.embeddings.create(model="all-minilm-l6-v2", input="hello world").data[0].embedding
    np.testing.assert_allclose(decoded, full, atol=1e-6)


def test_query_prompt_changes_the_embedding(client: openai.OpenAI):
    plain = client.embeddings.create(model="all-minilm-l6-v2", input="cats").data[0].embedding
    query = client.embeddings.create(model="all-minilm-l6-v2", input="cats", extra_body={"input_type": "query"})
    assert cos(plain, query.data[0].embedding) < 0.9999


def test_concurrent_embedding_requests_become_one_replica_call(api: str, ray_cluster: dict[str, str]):
    """While two long lists keep MiniLM's replica busy, 32 one-text requests wait in the gateway and
    reach the replica together: 34 requests, 3 replica calls. Each still gets its own vector."""
    metrics, model, url = ray_cluster["METRICS_URL"], "all-minilm-l6-v2", f"{api}/v1/embeddings"
    before = replica_requests(metrics, model)
    long_input = [f"a long list of sentences, this one number {n}" for n in range(512)]
    texts = [f"sentence {n} is about a cat on a mat" for n in range(32)]
    sent: list[float] = []
    long_done: list[float] = []

    def post(inputs: list[str] | str) -> httpx.Response:
        sent.append(time.monotonic())
        response = httpx.post(url, json={"model": model, "input": inputs}, timeout=300)
        if isinstance(inputs, list):
            long_done.append(time.monotonic())
        return response

    with ThreadPoolExecutor(34) as pool:
        long_lists = [pool.submit(post, long_input) for _ in range(2)]
        time.sleep(0.5)  # both long lists are out: the gateway sends two at a time per replica
        del sent[:]
        short = list(pool.map(post, texts))
        assert [f.result().status_code for f in long_lists] == [200, 200]
    assert max(sent) < min(long_done), "a long list was answered before every short request was sent"
    assert [r.status_code for r in short] == [200] * 32
    assert replica_requests(metrics, model) - before == 3
    together = httpx.post(url, json={"model": model, "input": texts}, timeout=300).json()
    for response, expected in zip(short, together["data"], strict=True):
        np.testing.assert_allclose(response.json()["data"][0]["embedding"], expected["embedding"], atol=1e-5)


def test_clip_embeds_each_image_and_text(client: openai.OpenAI):
    red, blue = Image.new("RGB", (40, 30), "red"), Image.new("RGB", (64, 64), "blue")
    result = client.embeddings.create(
        model="clip-vit-tiny", input=[data_url(red), data_url(blue), "a red square", data_url(red, "JPEG")]
    )
    vectors = [d.embedding for d in result.data]
    assert len(vectors) == 4 and len({len(v) for v in vectors}) == 1
    assert vectors[0] != vectors[1]
    assert cos(vectors[0], vectors[3]) > 0.99  # same picture, other encoding


# -- images and vision -----------------------------------------------------------------------


def test_image_generation_returns_pngs_of_the_requested_size(client: openai.OpenAI):
    result = client.images.generate(
        model="sd3.5-turbo-tiny", prompt="a lighthouse", n=2, size="64x32", extra_body={"seed": 3}
    )
    images = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in result.data]
    assert [(i.format, i.size) for i in images] == [("PNG", (64, 32))] * 2

    def first_image(seed: int) -> str:
        again = client.images.generate(
            model="sd3.5-turbo-tiny", prompt="a lighthouse", n=1, size="64x32", extra_body={"seed": seed}
        )
        return again.data[0].b64_json

    assert first_image(3) == result.data[0].b64_json
    assert first_image(4) != result.data[0].b64_json  # the seed reaches the pipeline's noise


VISION_QUESTION = {"type": "text", "text": "What is in the picture?"}


def image_growth(llava_folder: Path) -> int:
    """Tokens one image adds to a LLaVA prompt: its patch grid (the CLS token dropped) in place of
    the ``<image>`` placeholder, plus the text the chat template puts around the placeholder."""
    config = AutoConfig.from_pretrained(llava_folder)
    assert config.vision_feature_select_strategy == "default"  # "full" would keep the CLS token too
    grid = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    tokenizer = AutoTokenizer.from_pretrained(llava_folder)

    def prompt_tokens(content: list[dict]) -> int:
        messages = [{"role": "user", "content": content}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return len(tokenizer(prompt, add_special_tokens=False)["input_ids"])

    placeholder = 1  # "<image>" is one token, which the grid replaces
    return grid - placeholder + prompt_tokens([{"type": "image"}, VISION_QUESTION]) - prompt_tokens([VISION_QUESTION])


def assert_the_image_is_read(client: openai.OpenAI, model: str, hub_store: Path) -> None:
    """A vision model answers about a data-URL image, and its prompt is the image's tokens longer
    than the same question without it (an image dropped on the way would leave them equal)."""

    def ask(*parts: dict) -> ChatCompletion:
        messages = [{"role": "user", "content": [*parts, VISION_QUESTION]}]
        return client.chat.completions.create(model=model, messages=messages, max_tokens=6, temperature=0)

    answer = ask({"type": "image_url", "image_url": {"url": data_url(Image.new("RGB", (48, 48), "green"))}})
    assert answer.choices[0].finish_reason in ("stop", "length")
    grown = answer.usage.prompt_tokens - ask().usage.prompt_tokens
    assert grown == image_growth(hub_store / TINY_MODELS["llava"])


def test_vision_answers_about_a_data_url_image(client: openai.OpenAI, hub_store: Path):
    assert_the_image_is_read(client, "llava-tiny", hub_store)


# -- errors ----------------------------------------------------------------------------------


def test_unknown_model_is_404(client: openai.OpenAI, api: str):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=CHAT)
    response = httpx.post(f"{api}/v1/embeddings", json={"model": "gpt-9", "input": "x"})
    assert response.status_code == 404
    assert error_of(response)["code"] == "model_not_found" and "gpt-9" in error_of(response)["message"]


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/v1/chat/completions", b"{not json", 400, "JSON"),
        ("/v1/chat/completions", {"model": "qwen3-coder-tiny"}, 400, "messages"),
        (
            "/v1/chat/completions",
            {"model": "qwen3-coder-tiny", "messages": CHAT, "max_tokens": 100000},
            400,
            "max_tokens",
        ),
        ("/v1/chat/completions", {"model": "qwen3-coder-tiny", "messages": CHAT, "n": 50}, 400, "n must be"),
        (
            "/v1/chat/completions",
            {"model": "qwen3-coder-tiny", "messages": CHAT, "tool_choice": "required"},
            400,
            "tool_choice needs tools",
        ),
        (
            "/v1/chat/completions",
            {
                "model": "qwen3-coder-tiny",
                "messages": CHAT,
                "tools": [WEATHER_TOOL],
                "tool_choice": {"type": "function", "function": {"name": "get_time"}},
            },
            400,
            "'get_time', which is not in tools",
        ),
        (
            "/v1/chat/completions",
            {"model": "qwen3-coder-tiny", "messages": CHAT, "tools": [{"type": "function", "function": {"name": "/"}}]},
            400,
            "tools.0.function.name",
        ),
        (
            "/v1/chat/completions",
            {
                "model": "qwen3-coder-tiny",
                "messages": [*CHAT, {"role": "assistant", "tool_calls": [{"type": "function", "function": 5}]}],
            },
            400,
            f"messages.{len(CHAT)}.tool_calls.0.function",
        ),
        (
            "/v1/chat/completions",
            {
                "model": "qwen3-coder-tiny",
                "messages": [*CHAT, {"role": "assistant", "tool_calls": [{"type": "code", "function": {"name": "f"}}]}],
            },
            400,
            f"messages.{len(CHAT)}.tool_calls.0.type",
        ),
        (
            "/v1/completions",
            {"model": "qwen3-coder-tiny", "prompt": " word" * 2100, "max_tokens": 8},
            400,
            "context holds 2048 tokens",
        ),
        (
            "/v1/chat/completions",
            {"model": "qwen3-coder-tiny", "messages": [{"role": "user", "content": " word" * 2100}], "stream": True},
            400,
            "context holds 2048 tokens",
        ),
        ("/v1/completions", {"model": "all-minilm-l6-v2", "prompt": "x"}, 400, "text-embedding"),
        ("/v1/embeddings", {"model": "all-minilm-l6-v2", "input": []}, 400, "empty"),
        ("/v1/embeddings", {"model": "all-minilm-l6-v2", "input": ["x"] * 600}, 400, "at most 512"),
        ("/v1/embeddings", {"model": "all-minilm-l6-v2", "input": "x", "dimensions": 4096}, 400, "at most 384"),
        ("/v1/embeddings", {"model": "clip-vit-tiny", "input": "data:image/png;base64,%%%"}, 400, "base64"),
        (
            "/v1/embeddings",
            {"model": "clip-vit-tiny", "input": "https://example.com/cat.png"},
            400,
            "Remote image URLs are disabled",
        ),
        ("/v1/images/generations", {"model": "sd3.5-turbo-tiny", "prompt": "x", "n": 9}, 400, "n must be"),
        ("/v1/images/generations", {"model": "sd3.5-turbo-tiny", "prompt": "x", "size": "big"}, 400, "size"),
        ("/v1/images/generations", {"model": "sd3.5-turbo-tiny", "prompt": "x", "size": "2048x2048"}, 400, "pixels"),
        ("/v1/images/generations", {"model": "sd3.5-turbo-tiny", "prompt": "x", "size": "63x64"}, 400, "multiples"),
        (
            "/v1/images/generations",
            {"model": "sd3.5-turbo-tiny", "prompt": "x", "response_format": "url"},
            400,
            "b64_json",
        ),
    ],
)
def test_bad_requests_get_openai_errors(api: str, path: str, body, status: int, needle: str):
    if isinstance(body, bytes):
        response = httpx.post(f"{api}{path}", content=body, headers={"Content-Type": "application/json"})
    else:
        response = httpx.post(f"{api}{path}", json=body, timeout=60)
    assert response.status_code == status, response.text
    assert needle in error_of(response)["message"]


def test_image_parts_to_a_text_model_are_refused(api: str):
    image = data_url(Image.new("RGB", (8, 8)))
    body = {
        "model": "qwen3-coder-tiny",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": "hi"}],
            }
        ],
    }
    response = httpx.post(f"{api}/v1/chat/completions", json=body)
    assert response.status_code == 400 and "does not accept images" in error_of(response)["message"]


def test_oversized_image_and_body_are_413(api: str):
    huge = data_url(Image.new("RGB", (1100, 1000)))  # 1.1 MP > the demo CLIP limit of 1 MP
    response = httpx.post(f"{api}/v1/embeddings", json={"model": "clip-vit-tiny", "input": huge})
    assert response.status_code == 413 and "pixels" in error_of(response)["message"]
    response = httpx.post(f"{api}/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "x" * 5_000_000})
    assert response.status_code == 413 and error_of(response)["code"] == "request_too_large"


def test_api_keys_guard_every_route_but_health(api: str):
    secure = f"{api}/secure"
    assert httpx.get(f"{secure}/health").status_code == 200
    assert httpx.get(f"{secure}/v1/models").status_code == 401
    wrong = httpx.get(f"{secure}/v1/models", headers={"Authorization": "Bearer sk-wrong"})
    assert wrong.status_code == 401 and error_of(wrong)["type"] == "authentication_error"
    keyed = openai.OpenAI(base_url=f"{secure}/v1", api_key=API_KEY, max_retries=0)
    assert len(keyed.embeddings.create(model="all-minilm-l6-v2", input="ok").data[0].embedding) == 384
    assert API_KEY not in httpx.get(f"{secure}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).text


def test_a_downloading_model_reports_progress_and_503(api: str, hub_server: LocalHub):
    """A model whose weights crawl in: listed as downloading, requests get 503 + Retry-After, health is fast."""
    hub_server.state.throttles[SLOW_REPO] = 1024 * 1024  # 1 MB/s: the 90 MB of MiniLM take a while
    spec = DEMO.get("all-minilm-l6-v2").model_copy(update={"name": "slow-minilm", "repo_id": SLOW_REPO})
    catalog = {"models": [spec.model_dump()]}
    slow = f"{api}/slow"
    with catalog_apps(catalog, "gateway-slow", "/slow"):
        try:
            deadline = time.monotonic() + 120
            card: dict = {}
            while time.monotonic() < deadline:
                try:  # the slow gateway app may still be starting: its route answers late or not yet
                    response = httpx.get(f"{slow}/v1/models/slow-minilm", timeout=5)
                except httpx.HTTPError:
                    continue
                if response.status_code == 200:
                    card = response.json()
                    if card["status"]["state"] == "downloading" and card["status"]["progress"]["bytes_done"] > 0:
                        break
                time.sleep(0.5)
            assert card["status"]["state"] == "downloading", card
            progress = card["status"]["progress"]
            assert 0 < progress["bytes_done"] < progress["bytes_total"]

            refused = httpx.post(f"{slow}/v1/embeddings", json={"model": "slow-minilm", "input": "hi"})
            assert refused.status_code == 503
            assert int(refused.headers["Retry-After"]) >= 1
            error = error_of(refused)
            assert error["code"] == "model_not_ready" and error["model_status"]["state"] == "downloading"

            # Health does not wait on the models: answered while the download still runs.
            assert httpx.get(f"{slow}/health", timeout=READY_TIMEOUT_S).status_code == 200
            card = httpx.get(f"{slow}/v1/models/slow-minilm", timeout=5).json()
            assert card["status"]["state"] == "downloading", card
        finally:
            hub_server.state.throttles.clear()
        wait_for_models(slow, {"slow-minilm": "ready"}, timeout=180)
        assert httpx.post(f"{slow}/v1/embeddings", json={"model": "slow-minilm", "input": "hi"}).status_code == 200


def replica_ids(app: str) -> set[str]:
    """Names of the live replica actors of one Serve app (they carry the app name)."""
    import ray

    actors = ray.util.list_named_actors(all_namespaces=True)
    return {a["name"] for a in actors if a["name"].startswith(f"SERVE_REPLICA::{app}#")}


def test_one_capability_scales_without_touching_the_others(client: openai.OpenAI, api: str):
    """Each model is its own Serve app: scaling MiniLM to 2 replicas leaves the other replicas as they were."""
    others = {m.name: replica_ids(m.name) for m in DEMO.models if m.name != "all-minilm-l6-v2"}
    assert all(len(ids) == 1 for ids in others.values()), others
    spec = DEMO.get("all-minilm-l6-v2").model_copy(update={"num_replicas": 2})
    serve.run(
        build_model_app({"catalog": {"models": [spec.model_dump()]}, "model": spec.name}),
        name=spec.name,
        route_prefix=None,
    )
    try:
        assert len(replica_ids(spec.name)) == 2
        assert {name: replica_ids(name) for name in others} == others
        assert len(client.embeddings.create(model=spec.name, input=["a", "b"]).data) == 2
        assert client.chat.completions.create(model="qwen3-coder-tiny", messages=CHAT, max_tokens=2).choices
    finally:
        serve.run(build_model_app({"catalog": "demo", "model": spec.name}), name=spec.name, route_prefix=None)
    assert len(replica_ids(spec.name)) == 1


CANNOT_START = {
    # Weights that do not exist: the download error.
    "ghost-minilm": (
        DEMO.get("all-minilm-l6-v2").model_copy(update={"name": "ghost-minilm", "repo_id": "nobody/ghost-model"}),
        ("nobody/ghost-model", "repository not found"),
        ("/v1/embeddings", {"input": "x"}),
    ),
    # A vLLM entry on a node without vLLM (a GPU node without the gpu extra): what to install.
    "novllm-qwen3": (
        DEMO.get("qwen3-coder-tiny").model_copy(update={"name": "novllm-qwen3", "engine": "vllm"}),
        ("engine vllm needs vLLM", "install candle[gpu]"),
        ("/v1/chat/completions", {"messages": CHAT}),
    ),
}


@pytest.mark.parametrize("name", sorted(CANNOT_START))
def test_a_model_that_cannot_start_reports_why(api: str, name: str):
    """/v1/models says failed with the replica's own error as the reason; requests get 503 model_failed."""
    spec, reasons, (route, body) = CANNOT_START[name]
    if spec.engine == "vllm" and importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here: the entry would start")
    with catalog_apps({"models": [spec.model_dump()]}, f"gateway-{name}", f"/{name}"):
        status = wait_for_models(f"{api}/{name}", {name: "failed"}, timeout=120)[name]["status"]
        assert all(reason in status["reason"] for reason in reasons), status["reason"]
        refused = httpx.post(f"{api}/{name}{route}", json={"model": name, **body})
        assert refused.status_code == 503 and error_of(refused)["code"] == "model_failed"
