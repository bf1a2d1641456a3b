"""``candle demo`` as a user runs it: a real ``serve run`` on its own local Ray, stopped with Ctrl-C.

The demo starts a second Ray cluster next to the test session's (``RAY_ADDRESS=local``) and shares
the session's tiny-model store, so it builds only the models no earlier test built.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import psutil
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from candle.catalog import CAPABILITIES, load_catalog
from candle.testing import free_port, wait_for_models
from tests import readme
from tests.test_api import CHAT, assert_the_image_is_read, data_url

pytestmark = pytest.mark.serve  # `candle demo` brings up its own Ray and Serve

READY_TIMEOUT_S = 300


def answer_one_request_per_capability(base_url: str, hub_store: Path) -> None:
    """What the README tells a user to try on the demo, one request per capability, with the answers' shapes."""
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
    chat = client.chat.completions.create(model="qwen3-coder-tiny", messages=CHAT, max_tokens=4)
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens > 0
    completion = client.completions.create(model="qwen3-coder-tiny", prompt="def add(a, b):", max_tokens=4)
    assert completion.choices[0].finish_reason in ("stop", "length") and completion.usage.completion_tokens > 0

    texts = client.embeddings.create(model="all-minilm-l6-v2", input=["a cat sits on the mat", "a kitten"]).data
    assert [len(d.embedding) for d in texts] == [384, 384]
    red, blue = (data_url(Image.new("RGB", (32, 32), color)) for color in ("red", "blue"))
    pictures = client.embeddings.create(model="clip-vit-tiny", input=[red, blue]).data
    assert len(pictures) == 2 and len(pictures[0].embedding) == len(pictures[1].embedding) > 0
    assert pictures[0].embedding != pictures[1].embedding

    ranked = httpx.post(
        f"{base_url}/rerank",
        json={"model": "bge-reranker-tiny", "query": "a cat", "documents": ["a cat sits", "tax report"]},
        timeout=120,
    ).json()["results"]
    assert sorted(r["index"] for r in ranked) == [0, 1] and ranked[0]["relevance_score"] >= ranked[1]["relevance_score"]

    generated = client.images.generate(model="sd3.5-turbo-tiny", prompt="a lighthouse", size="64x32")
    image = Image.open(io.BytesIO(base64.b64decode(generated.data[0].b64_json)))
    assert (image.format, image.size) == ("PNG", (64, 32))

    assert_the_image_is_read(client, "llava-tiny", hub_store)


def send_the_readme_s_first_requests(port: int) -> None:
    """The README's curl commands and its Python, as written but for the demo's port."""
    here = f"127.0.0.1:{port}"
    for command in [c for c in readme.commands() if c.startswith("curl ")]:
        done = subprocess.run(
            ["bash", "-c", command.replace("127.0.0.1:8000", here) + " --fail --silent --show-error"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"{command}: {done.stderr}"
        answer = json.loads(done.stdout)
        assert answer.get("data") or answer.get("results"), command
    (snippet,) = readme.code_blocks("python")
    done = subprocess.run(
        [sys.executable, "-c", snippet.replace("127.0.0.1:8000", here)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


@dataclass
class Demo:
    process: subprocess.Popen
    port: int
    log: Path
    spawned: list[psutil.Process] = field(default_factory=list)  # killed on the way out, if still alive

    def wait_ready(self, models: Iterable[str], timeout_s: float) -> dict[str, dict]:
        """The /v1/models cards once every model is ready; the demo's log tail in the error otherwise."""
        return self.wait_for(dict.fromkeys(models, "ready"), timeout_s)

    def wait_for(self, states: Mapping[str, str], timeout_s: float) -> dict[str, dict]:
        """The /v1/models cards once each model is in its state; the demo's log tail in the error otherwise."""
        try:
            return wait_for_models(f"http://127.0.0.1:{self.port}", states, timeout_s)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.log.read_text()[-3000:]}") from None


@contextlib.contextmanager
def running_demo(hub_store: Path, home: Path, *options: str, ray_address: str = "local") -> Iterator[Demo]:
    """``candle demo`` as a terminal's foreground job starts it, sharing the session's tiny-model store
    (it builds only what the API tests have not), on a Ray of its own unless ``ray_address`` names one;
    on the way out, nothing it started is left running."""
    (home / "store").symlink_to(hub_store)
    port = free_port()
    env = {**os.environ, "RAY_ADDRESS": ray_address, "CANDLE_DEMO_HOME": str(home)}
    with (home / "demo.log").open("w") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("candle")), "demo", "--port", str(port), *options],
            env=env,
            start_new_session=True,  # its own process group, as a terminal's foreground job has
            # Started with SIGINT ignored, as a script's background job is (``make demo &``): Ctrl-C
            # to the group must stop it all the same, ``serve run`` included.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        demo = Demo(process, port, home / "demo.log")
        try:
            yield demo
        finally:  # on failure, leave no cluster behind: serve run has a process group of its own, killpg misses it
            if process.poll() is None:
                demo.spawned = psutil.Process(process.pid).children(recursive=True)
                process.kill()
            for child in demo.spawned:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()


def served_requests_on(metrics_url: str, timeout_s: float = 60) -> float:
    """The requests Ray's Prometheus endpoint at ``metrics_url`` has counted, once it counts any (its agent
    exports every few seconds)."""
    served, deadline = 0.0, time.monotonic() + timeout_s
    while not served and time.monotonic() < deadline:
        time.sleep(1)
        with contextlib.suppress(httpx.HTTPError):
            families = text_string_to_metric_families(httpx.get(metrics_url, timeout=10).text)
            served = sum(s.value for f in families for s in f.samples if s.name == "ray_candle_requests_total")
    return served


# Above the ready wait's own bound: the session's 300 s would stop a slow start before it can say which
# model is late (CI at load 40 took longer than 300 s in all).
@pytest.mark.timeout(READY_TIMEOUT_S + 300)
def test_demo_serves_every_capability_and_ctrl_c_leaves_no_process_behind(hub_store: Path, tmp_path: Path):
    metrics_port = free_port()
    with running_demo(hub_store, tmp_path, "--metrics-port", str(metrics_port)) as demo:
        cards = demo.wait_ready([m.name for m in load_catalog("demo").models], READY_TIMEOUT_S)
        capabilities = {card["capability"] for card in cards.values()}
        assert capabilities == set(CAPABILITIES)
        answer_one_request_per_capability(f"http://127.0.0.1:{demo.port}/v1", hub_store)
        send_the_readme_s_first_requests(demo.port)
        # Ray's Prometheus endpoint listens where `--metrics-port` said (candle.demo.serve_run), with the
        # serving metrics of the requests above.
        assert served_requests_on(f"http://127.0.0.1:{metrics_port}/metrics") > 0
        assert f"Prometheus metrics on http://127.0.0.1:{metrics_port}/metrics" in demo.log.read_text()
        demo.spawned = psutil.Process(demo.process.pid).children(recursive=True)
        assert any("raylet" in p.name() for p in demo.spawned)  # the demo's own cluster, not the session's

        os.killpg(demo.process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert demo.process.wait(timeout=90) == 0
        _, alive = psutil.wait_procs(demo.spawned, timeout=30)
        assert not alive, f"left running after Ctrl-C: {sorted({p.name() for p in alive})}"


def test_demo_serves_a_users_own_catalog_file(hub_store: Path, tmp_path: Path):
    """``candle demo --catalog FILE``: the user's entries, under the user's names and limits, through the
    SDK: one with a deployment of its own, one in a warm pool (loaded by its first request)."""
    catalog = tmp_path / "mine.yaml"
    catalog.write_text(
        "pools:\n"
        "  my-pool: {resources: {num_cpus: 0.25}}\n"
        "models:\n"
        "  - name: my-minilm\n"
        "    capability: text-embedding\n"
        "    repo_id: sentence-transformers/all-MiniLM-L6-v2\n"
        "    limits: {max_input_items: 2}\n"
        "    resources: {num_cpus: 0.5}\n"
        "  - name: my-pooled-minilm\n"
        "    capability: text-embedding\n"
        "    repo_id: sentence-transformers/all-MiniLM-L6-v2\n"
        "    pool: my-pool\n"
    )
    (tmp_path / "home").mkdir()
    with running_demo(hub_store, tmp_path / "home", "--catalog", str(catalog)) as demo:
        cards = demo.wait_for({"my-minilm": "ready", "my-pooled-minilm": "idle"}, READY_TIMEOUT_S)
        assert list(cards) == ["my-minilm", "my-pooled-minilm"]  # only the user's models: not the default five
        assert cards["my-pooled-minilm"]["pool"] == "my-pool"
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{demo.port}/v1", api_key="unused", max_retries=0)
        vectors = client.embeddings.create(model="my-minilm", input=["a cat sits on the mat", "a kitten"]).data
        assert [len(v.embedding) for v in vectors] == [384, 384]
        with pytest.raises(openai.BadRequestError, match="at most 2 items"):  # the user's own limit
            client.embeddings.create(model="my-minilm", input=["a", "b", "c"])
        pooled = client.embeddings.create(model="my-pooled-minilm", input=["a cat sits on the mat", "a kitten"]).data
        for mine, own in zip(pooled, vectors, strict=True):  # the same weights, loaded on demand
            assert mine.embedding == pytest.approx(own.embedding, abs=1e-5)
        assert demo.wait_for({"my-pooled-minilm": "ready"}, 30)["my-pooled-minilm"]["status"]["replicas"]


def test_demo_refuses_a_catalog_naming_repos_the_demo_hub_lacks(tmp_path: Path):
    catalog = tmp_path / "theirs.yaml"
    catalog.write_text("models:\n  - {name: big, capability: text-embedding, repo_id: someone/not-in-the-demo}\n")
    env = {**os.environ, "CANDLE_DEMO_HOME": str(tmp_path / "home")}
    candle = str(Path(sys.executable).with_name("candle"))
    done = subprocess.run([candle, "demo", "--catalog", str(catalog)], env=env, capture_output=True, text=True)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("candle demo: error:")]
    assert errors == [errors[0]] and errors[0].startswith(
        "candle demo: error: ValueError: the demo hub holds no repo someone/not-in-the-demo;"
    )
    assert not (tmp_path / "home").exists()  # nothing started
