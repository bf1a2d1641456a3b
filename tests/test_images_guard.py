"""Hostile images and bursts: what the gateway accepts, what it may fetch, and what it queues.

The image checks run in-process on real PIL and real loopback HTTP servers; the batch, the
off-event-loop check and the queue run on real Ray Serve apps (tiny CLIP and MiniLM from the test
hub) behind a gateway whose remote-image allow-list admits loopback, which only tests need.
No test sends traffic anywhere but loopback: forbidden addresses are refused before connecting.
"""

from __future__ import annotations

import base64
import io
import math
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_network
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from candle.api.errors import APIError
from candle.api.image_urls import load_image_bytes
from candle.catalog import ModelSpec, load_catalog
from candle.contracts import EmbedCall
from candle.demo.hub import LocalHub
from candle.demo.tiny_models import TINY_MODELS, build_tiny_store
from candle.engines import load_engine
from candle.engines.errors import InvalidInput
from candle.placement import deployment_options
from candle.testing import catalog_apps, wait_for_models
from deployments.replicas.embedding import EmbeddingReplica

DEMO = load_catalog("demo")
MAX_PIXELS = 1024 * 1024
MAX_BYTES = 1_000_000
LOOPBACK = (ip_network("127.0.0.0/8"),)


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def data_url(data: bytes, subtype: str = "png") -> str:
    return f"data:image/{subtype};base64,{base64.b64encode(data).decode()}"


def noise_png(size: int = 64) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return encoded(Image.fromarray(pixels), "PNG")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` with almost no pixel data behind it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n"
    b"newpath 0 0 moveto 16 16 lineto stroke\nshowpage\n%%EOF\n"
)


def load(url: str, **overrides) -> bytes:
    options = {"param": "input", "max_pixels": MAX_PIXELS, "max_bytes": MAX_BYTES, "allow_remote": True}
    return load_image_bytes(url, **{**options, **overrides})


def refused(url: str, **overrides) -> APIError:
    with pytest.raises(APIError) as caught:
        load(url, **overrides)
    assert url not in caught.value.message
    return caught.value


# -- formats, bombs, truncation ----------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "subtype"), [("PNG", "png"), ("JPEG", "jpeg"), ("WEBP", "webp"), ("GIF", "gif")])
def test_png_jpeg_webp_and_gif_are_accepted(fmt: str, subtype: str):
    data = encoded(Image.new("RGB", (32, 24), "red"), fmt)
    assert load(data_url(data, subtype)) == data


@pytest.mark.parametrize(
    ("data", "subtype"),
    [
        (EPS, "png"),  # PIL would hand EPS to Ghostscript where it is installed
        (encoded(Image.new("RGB", (8, 8)), "TIFF"), "png"),
        (encoded(Image.new("RGB", (8, 8)), "BMP"), "jpeg"),
    ],
    ids=["eps", "tiff", "bmp"],
)
def test_other_formats_are_refused_whatever_the_url_declares(data: bytes, subtype: str):
    error = refused(data_url(data, subtype))
    assert (error.status, error.code) == (400, "invalid_image")
    assert "PNG, JPEG, WebP or GIF" in error.message


@pytest.mark.parametrize("subtype", ["x-eps", "svg+xml", "tiff"])
def test_the_declared_type_must_be_an_accepted_one(subtype: str):
    error = refused(data_url(noise_png(), subtype))
    assert (error.status, error.code) == (400, "unsupported_image_type")


def test_a_truncated_image_is_400():
    whole = noise_png()
    error = refused(data_url(whole[: len(whole) // 2]))
    assert (error.status, error.code) == (400, "invalid_image")
    assert "truncated" in error.message


def test_a_decompression_bomb_is_400():
    bomb = png_header_only(30_000, 30_000)  # 900 MP: over PIL's own bomb limit
    error = refused(data_url(bomb), max_pixels=10**10)
    assert (error.status, error.code) == (400, "invalid_image")
    assert "pixels" in error.message
    over_limit = refused(data_url(png_header_only(2000, 2000)))  # under PIL's limit, over the model's
    assert over_limit.status == 413 and "2000x2000 pixels" in over_limit.message


# -- one bad image in a batch ------------------------------------------------------------------


def test_a_bad_image_fails_only_its_own_request_in_a_batch(hub_store: Path):
    """Four requests gathered into one batch (what ``@serve.batch`` hands the replica): the
    truncated image fails alone, the three good ones get the vectors they get on their own."""
    folder = build_tiny_store(hub_store, ["clip"])["clip"]
    spec = DEMO.get("clip-vit-tiny")
    replica = EmbeddingReplica.__new__(EmbeddingReplica)  # the replica's logic without Serve's actor
    replica.spec, replica.engine = spec, load_engine(spec, folder)
    good = [encoded(Image.new("RGB", (40, 30), colour), "PNG") for colour in ("red", "green", "blue")]
    whole = noise_png()
    *ok, bad = replica.embed_calls([EmbedCall((image,)) for image in good] + [EmbedCall((whole[: len(whole) // 2],))])
    assert isinstance(bad, InvalidInput) and "could not be decoded" in str(bad), bad
    for result, image in zip(ok, good, strict=True):
        assert not isinstance(result, BaseException), result
        (alone,) = replica.embed_calls([EmbedCall((image,))])
        np.testing.assert_allclose(result[0], alone[0], atol=1e-5)


# -- remote images -----------------------------------------------------------------------------


@contextmanager
def image_server(routes: dict[str, Callable[[BaseHTTPRequestHandler], None]], host: str = "127.0.0.1") -> Iterator[str]:
    """A loopback HTTP server answering each path with its handler; yields the base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            routes[self.path](self)

        def log_message(self, *args) -> None:
            pass

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("Server", (ThreadingHTTPServer,), {"address_family": family})
    server = server_class((host, 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        yield f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    finally:
        server.shutdown()
        server.server_close()


def send(body: bytes, status: int = 200, headers: dict[str, str] | None = None):
    def handler(request: BaseHTTPRequestHandler) -> None:
        request.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            request.send_header(key, value)
        request.end_headers()
        request.wfile.write(body)

    return handler


def redirect(location: str):
    return send(b"", 302, {"Location": location})


PNG = encoded(Image.new("RGB", (16, 16), "red"), "PNG")


def test_remote_images_from_an_allowed_network_are_fetched_through_redirects():
    with image_server({"/cat.png": send(PNG), "/moved": redirect("/cat.png")}) as base:
        assert load(f"{base}/cat.png", allowed_networks=LOOPBACK) == PNG
        assert load(f"{base}/moved", allowed_networks=LOOPBACK) == PNG


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_is_refused_after_resolution(host: str):
    with image_server({"/cat.png": send(PNG)}, "::1" if host == "::1" else "127.0.0.1") as base:
        url = base.replace("127.0.0.1", host) + "/cat.png"
        error = refused(url)
    assert (error.status, error.code) == (400, "forbidden_image_url")


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata (link-local)
        "http://[fd00:ec2::254]/latest/meta-data/",  # AWS metadata over IPv6
        "http://100.100.100.200/latest/meta-data/",  # Alibaba metadata (shared address space)
        "http://10.1.2.3/cat.png",
        "http://192.168.0.1/cat.png",
        "http://[::ffff:10.1.2.3]/cat.png",  # a private address inside an IPv4-mapped IPv6 one
        "http://[2002:a01:203::1]/cat.png",  # ... inside a 6to4 one
        "http://224.0.0.1/cat.png",  # multicast
        "http://0.0.0.0/cat.png",
        "http://[fec0::1]/cat.png",  # IPv6 site-local (deprecated, still routed inside sites)
    ],
)
def test_private_link_local_multicast_and_metadata_addresses_are_refused(url: str):
    error = refused(url, allowed_networks=LOOPBACK)
    assert (error.status, error.code) == (400, "forbidden_image_url")


def test_metadata_is_refused_even_inside_an_allowed_network():
    error = refused("http://169.254.169.254/latest/meta-data/", allowed_networks=(ip_network("169.254.0.0/16"),))
    assert error.code == "forbidden_image_url"


@pytest.mark.parametrize(
    "target",
    ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/x.png", "http://[::1]:1/x.png"],
)
def test_a_redirect_to_a_forbidden_address_is_refused(target: str):
    with image_server({"/cat.png": redirect(target)}) as base:
        error = refused(f"{base}/cat.png", allowed_networks=LOOPBACK)
    assert (error.status, error.code) == (400, "forbidden_image_url")


def test_redirects_are_bounded():
    with image_server({"/loop": redirect("/loop")}) as base:
        error = refused(f"{base}/loop", allowed_networks=LOOPBACK)
    assert error.status == 400 and "redirects" in error.message


def test_the_fetch_has_a_total_deadline():
    """A server that trickles a byte at a time never trips a per-read timeout; the deadline ends it."""

    def trickle(request: BaseHTTPRequestHandler) -> None:
        request.send_response(200)
        request.send_header("Content-Length", "100000")
        request.end_headers()
        for _ in range(100_000):
            request.wfile.write(b"\0")
            request.wfile.flush()
            time.sleep(0.05)

    with image_server({"/slow.png": trickle}) as base:
        error = refused(f"{base}/slow.png", allowed_networks=LOOPBACK, deadline_s=1.0)
    assert (error.status, error.code) == (400, "remote_image_timeout")


def test_the_fetch_has_a_size_cap():
    big = b"\0" * (MAX_BYTES + 1)

    def undeclared(request: BaseHTTPRequestHandler) -> None:  # no length: the body ends when the server closes
        request.send_response(200)
        request.end_headers()
        request.wfile.write(big)

    with image_server({"/big.png": send(big), "/undeclared.png": undeclared}) as base:
        for path in ("/big.png", "/undeclared.png"):
            assert refused(f"{base}{path}", allowed_networks=LOOPBACK).status == 413


def test_credentials_in_image_urls_are_refused_and_never_echoed():
    error = refused("http://user:s3cret@example.com/cat.png")
    assert error.status == 400 and "s3cret" not in error.message


# -- through the gateway: off the event loop, 400s, queueing -----------------------------------

QUEUE_BUDGET_S = 60.0
QUEUE_REQUEST_S = 0.5
TIGHT_BUDGET_S = 2.0  # queues 4 requests
SLOW_INPUT = [f"sentence {i} " + "word " * 60 for i in range(64)]  # makes each request take a while
# A burst's requests take long enough that most of it is still queued once the last one arrives.
BURST_INPUT = SLOW_INPUT[:16]
# Seconds of work per request on two shared cores, far longer than sending a burst takes.
HEAVY_INPUT = [f"passage {i} " + "word " * 60 for i in range(256)]


def queue_model(name: str, budget_s: float) -> ModelSpec:
    """MiniLM working one request at a time, with a queue derived from ``budget_s``."""
    limits = DEMO.get("all-minilm-l6-v2").limits.model_copy(
        update={"queue_latency_budget_s": budget_s, "request_time_s": QUEUE_REQUEST_S}
    )
    return DEMO.get("all-minilm-l6-v2").model_copy(update={"name": name, "max_ongoing_requests": 1, "limits": limits})


@pytest.fixture(scope="module")
def guarded(serve_base: str, hub_server: LocalHub, hub_store: Path) -> Iterator[str]:
    """A gateway at /guard with remote images on (loopback allowed) before CLIP and two queued MiniLMs."""
    build_tiny_store(hub_store, ["clip", "minilm"])
    assert TINY_MODELS["minilm"] == DEMO.get("all-minilm-l6-v2").repo_id
    models = [
        DEMO.get("clip-vit-tiny").model_copy(update={"name": "guard-clip"}),
        queue_model("queue-minilm", QUEUE_BUDGET_S),
        queue_model("tight-minilm", TIGHT_BUDGET_S),
    ]
    catalog = {"models": [m.model_dump() for m in models]}
    gateway = {"allow_remote_images": True, "remote_image_allowed_networks": ["127.0.0.0/8"]}
    with catalog_apps(catalog, "gateway-guard", "/guard", gateway):
        base = f"{serve_base}/guard"
        wait_for_models(base, {m.name: "ready" for m in models}, timeout=600)
        yield base


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"]), body
    return body["error"]


def test_the_gateway_answers_bad_images_with_openai_400s(guarded: str):
    whole = noise_png()
    for url in (data_url(whole[: len(whole) // 2]), data_url(EPS, "png"), data_url(whole, "x-eps")):
        response = httpx.post(f"{guarded}/v1/embeddings", json={"model": "guard-clip", "input": [url]}, timeout=60)
        assert response.status_code == 400, response.text
        assert error_of(response)["param"] == "input[0]"


def test_remote_fetches_run_off_the_gateway_event_loop(guarded: str):
    """While a remote image stalls, the gateway still answers; then the image embeds like its data URL."""
    release = threading.Event()

    def stalled(request: BaseHTTPRequestHandler) -> None:
        release.wait(60)
        send(PNG)(request)

    with image_server({"/stalled.png": stalled}) as base, ThreadPoolExecutor(1) as pool:
        body = {"model": "guard-clip", "input": [f"{base}/stalled.png"]}
        pending = pool.submit(httpx.post, f"{guarded}/v1/embeddings", json=body, timeout=120)
        try:
            # Under the old 10 s per-read timeout a blocked loop would answer only after it.
            health = httpx.get(f"{guarded}/health", timeout=8)
            cards = httpx.get(f"{guarded}/v1/models", timeout=8)
        finally:
            release.set()
        assert health.status_code == 200 and cards.status_code == 200
        fetched = pending.result()
    assert fetched.status_code == 200, fetched.text
    inline = httpx.post(f"{guarded}/v1/embeddings", json={"model": "guard-clip", "input": [data_url(PNG)]}, timeout=60)
    np.testing.assert_allclose(fetched.json()["data"][0]["embedding"], inline.json()["data"][0]["embedding"], atol=1e-5)


def test_a_requests_remote_images_share_one_deadline(guarded: str):
    """Two images, each sent 6 s after the one before it was: each alone within the 10 s deadline, the
    pair not. One deadline covers the request's fetches, so it is refused, not served after 12 s."""
    sent = [threading.Event(), threading.Event()]

    def after_previous(index: int):
        def handler(request: BaseHTTPRequestHandler) -> None:
            if index > 0:
                sent[index - 1].wait(60)
            time.sleep(6)
            send(PNG)(request)
            sent[index].set()

        return handler

    with image_server({"/0.png": after_previous(0), "/1.png": after_previous(1)}) as base:
        body = {"model": "guard-clip", "input": [f"{base}/0.png", f"{base}/1.png"]}
        response = httpx.post(f"{guarded}/v1/embeddings", json=body, timeout=120)
        assert sent[0].is_set(), "the first image was served: the deadline ran over the pair"
    assert response.status_code == 400, response.text[:300]
    assert error_of(response)["code"] == "remote_image_timeout"


def burst(url: str, model: str, n: int, texts: list[str] = SLOW_INPUT) -> list[httpx.Response]:
    with ThreadPoolExecutor(n) as pool:
        body = {"model": model, "input": texts}
        return list(pool.map(lambda _: httpx.post(url, json=body, timeout=300), range(n)))


def test_the_queue_bound_is_derived_from_the_latency_budget():
    """budget / time per request x concurrent requests x replicas: the requests one caller may queue."""
    spec = queue_model("queue-minilm", QUEUE_BUDGET_S)
    options = deployment_options(spec)
    assert options["max_queued_requests"] == math.ceil(QUEUE_BUDGET_S / QUEUE_REQUEST_S) == 120
    assert options["backpressure_config"] == {"retry_after_s": QUEUE_BUDGET_S}
    scaled = spec.model_copy(update={"num_replicas": 2, "max_ongoing_requests": 4})
    assert deployment_options(scaled)["max_queued_requests"] == 960


def test_a_burst_over_the_old_fixed_bound_is_queued_not_refused(guarded: str):
    """80 concurrent requests to a replica that works one at a time: the old 64-request queue refused
    the rest with 503; the derived queue of 120 holds them all."""
    responses = burst(f"{guarded}/v1/embeddings", "queue-minilm", 80, BURST_INPUT)
    assert [r.status_code for r in responses] == [200] * 80, {r.status_code: r.text[:200] for r in responses}


def processing(metrics_url: str, app: str) -> float:
    """Requests ``app``'s replica is working on, as Serve exports it (Ray's agent refreshes it every second)."""
    for line in httpx.get(metrics_url, timeout=30).text.splitlines():
        if line.startswith("ray_serve_replica_processing_queries{") and f'application="{app}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_past_the_bound_a_burst_gets_503_with_retry_after(guarded: str, ray_cluster: dict[str, str]):
    """A two-second budget queues 4 requests behind the one a replica works on. With one running, a
    burst of 11 (each request takes seconds) has exactly 4 queued and served, and 7 hear when to come
    back (once the budget has passed, the queue has been worked off). Serve counts a request as
    queued until its replica takes it, so the burst starts once the first one runs."""
    url, body = f"{guarded}/v1/embeddings", {"model": "tight-minilm", "input": HEAVY_INPUT}
    sent: list[float] = []
    first_done: list[float] = []

    def post(index: int) -> httpx.Response:
        sent.append(time.monotonic())
        response = httpx.post(url, json=body, timeout=300)
        if index == 0:
            first_done.append(time.monotonic())
        return response

    with ThreadPoolExecutor(12) as pool:
        first = pool.submit(post, 0)
        for _ in range(240):
            if processing(ray_cluster["METRICS_URL"], "tight-minilm") >= 1:
                break
            time.sleep(0.25)
        else:
            pytest.fail(f"the first request never ran: {first.result().text[:200] if first.done() else 'pending'}")
        responses = list(pool.map(post, range(1, 12)))
        assert first.result().status_code == 200, first.result().text[:200]
    assert max(sent) < first_done[0], "the whole burst was sent while the first request ran"
    statuses = [r.status_code for r in responses]
    assert sorted(statuses) == [200] * 4 + [503] * 7, statuses
    for response in (r for r in responses if r.status_code == 503):
        assert error_of(response)["code"] == "overloaded" and response.headers["Retry-After"] == "2"
