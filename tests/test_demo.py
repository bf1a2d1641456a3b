"""``candle demo`` as a user runs it: a real ``serve run`` on its own local Ray, stopped with Ctrl-C.

The demo starts a second Ray cluster next to the test session's (``RAY_ADDRESS=local``) and shares
the session's tiny-model store, so it builds only the models no earlier test built.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import openai
import psutil
from PIL import Image

from candle.catalog import load_catalog
from candle.testing import free_port, wait_for_models
from tests.test_api import CHAT, assert_the_image_is_read, data_url

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

    generated = client.images.generate(model="sd3.5-turbo-tiny", prompt="a lighthouse", size="64x32")
    image = Image.open(io.BytesIO(base64.b64decode(generated.data[0].b64_json)))
    assert (image.format, image.size) == ("PNG", (64, 32))

    assert_the_image_is_read(client, "llava-tiny", hub_store)


@dataclass
class Demo:
    process: subprocess.Popen
    port: int
    log: Path
    spawned: list[psutil.Process] = field(default_factory=list)  # killed on the way out, if still alive

    def wait_ready(self, models: Iterable[str], timeout_s: float) -> dict[str, dict]:
        """The /v1/models cards once every model is ready; the demo's log tail in the error otherwise."""
        try:
            return wait_for_models(f"http://127.0.0.1:{self.port}", dict.fromkeys(models, "ready"), timeout_s)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.log.read_text()[-3000:]}") from None


@contextlib.contextmanager
def running_demo(hub_store: Path, home: Path, *options: str) -> Iterator[Demo]:
    """``candle demo`` as a terminal's foreground job starts it, sharing the session's tiny-model store
    (it builds only what the API tests have not); on the way out, nothing it started is left running."""
    (home / "store").symlink_to(hub_store)
    port = free_port()
    env = {**os.environ, "RAY_ADDRESS": "local", "CANDLE_DEMO_HOME": str(home)}
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
        finally:  # on failure, leave no cluster behind: serve run has its own session, killpg misses it
            if process.poll() is None:
                demo.spawned = psutil.Process(process.pid).children(recursive=True)
                process.kill()
            for child in demo.spawned:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()


def test_demo_serves_every_capability_and_ctrl_c_leaves_no_process_behind(hub_store: Path, tmp_path: Path):
    with running_demo(hub_store, tmp_path) as demo:
        cards = demo.wait_ready([m.name for m in load_catalog("demo").models], READY_TIMEOUT_S)
        capabilities = {card["capability"] for card in cards.values()}
        assert capabilities == {"text-to-text", "text-embedding", "text-to-image", "image-embedding", "vision"}
        answer_one_request_per_capability(f"http://127.0.0.1:{demo.port}/v1", hub_store)
        demo.spawned = psutil.Process(demo.process.pid).children(recursive=True)
        assert any("raylet" in p.name() for p in demo.spawned)  # the demo's own cluster, not the session's

        os.killpg(demo.process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert demo.process.wait(timeout=90) == 0
        _, alive = psutil.wait_procs(demo.spawned, timeout=30)
        assert not alive, f"left running after Ctrl-C: {sorted({p.name() for p in alive})}"
