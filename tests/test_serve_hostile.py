"""`ugen serve` against hostile and careless clients (issue 29): bodies past their limit, images
that decode to gigabytes, clients that hang up, a dying batch worker, cross-site posts, and 500s
that must not leak their detail. Each case runs against a live server (uvicorn in a thread)."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import numpy as np
import PIL.Image
import pytest

import ugen
from ugen.sampling import Abandoned, SamplingParams
from ugen.serve import app as serve_app
from ugen.serve import create_app
from ugen.serve.app import JSON_BODY_BYTES, default_max_pixels
from ugen.serve.batcher import Batcher

from conftest import live_server


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return ugen.load(tiny_model_dir)


def raw_request(url: str, head: str, chunks=(), timeout: float = 10.0) -> tuple[int, bytes]:
    """Send a request head and then `chunks` over a plain socket, stop sending at the first error
    (a server that answered early may close), and return the status and the bytes of the answer."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    with socket.create_connection((host, port), timeout=timeout) as conn:
        conn.sendall(head.encode())
        try:
            for chunk in chunks:
                conn.sendall(chunk)
        except OSError:
            pass
        answer = b""
        while True:  # the head, then as much body as it declares
            head_end = answer.find(b"\r\n\r\n")
            if head_end >= 0:
                declared = [line.split(b":")[1] for line in answer[:head_end].lower().split(b"\r\n")
                            if line.startswith(b"content-length:")]
                if len(answer) >= head_end + 4 + int(declared[0] if declared else 0):
                    break
            data = conn.recv(65536)
            if not data:
                break
            answer += data
    return int(answer.split(b" ", 2)[1]), answer


def bomb_png(width: int, height: int) -> bytes:
    """A PNG of one colour, width x height RGB, written row by row: a few hundred KB that decode to
    width * height * 3 bytes (never held whole here)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    squeeze, row, parts = zlib.compressobj(9), b"\0" + b"\xff" * (3 * width), []
    for _ in range(height):
        parts.append(squeeze.compress(row))
    parts.append(squeeze.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(model):
    with live_server(create_app(model)) as url:
        yield url


@pytest.mark.parametrize("path, kind", [("/generate", "application/json"),
                                        ("/caption", "multipart/form-data; boundary=x")])
def test_a_declared_body_past_the_limit_is_413_before_any_of_it_is_read(server, path, kind):
    # 64 MiB announced, none sent: a server that reads first would wait for the body until the socket times out.
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {kind}\r\nContent-Length: {64 * 2**20}\r\n\r\n"
    status, answer = raw_request(server, head)
    assert status == 413 and b"limit" in answer
    assert httpx.get(f"{server}/health").status_code == 200


def test_a_streamed_body_is_cut_at_the_limit(server):
    # Chunked, so no length is declared; more than the limit is sent, and the body never ends.
    head = "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    piece = b"x" * 16384
    chunks = [f"{len(piece):x}\r\n".encode() + piece + b"\r\n"] * (JSON_BODY_BYTES // len(piece) + 2)
    status, answer = raw_request(server, head, chunks)
    assert status == 413 and f"{JSON_BODY_BYTES:,} bytes".encode() in answer


def test_an_image_of_too_many_pixels_is_refused_from_its_header(server, model):
    side = int(default_max_pixels(model.image_size) ** 0.5) + 500  # just past the limit: ~50 MB decoded
    bomb = bomb_png(side, side)
    assert len(bomb) < 2**20
    answer = httpx.post(f"{server}/caption", files={"image": ("bomb.png", bomb)}, timeout=60)
    assert answer.status_code == 413 and "megapixels" in answer.json()["error"]


def test_images_decode_off_the_event_loop(model, monkeypatch):
    real = serve_app.read_image

    def slow_read(image, size):  # a large photo's decode and resize, as the server sees it
        time.sleep(2.0)
        return real(image, size)

    monkeypatch.setattr(serve_app, "read_image", slow_read)
    picture = png_bytes(np.full((48, 48, 3), 200, dtype=np.uint8))
    with live_server(create_app(model)) as url, ThreadPoolExecutor(1) as pool:
        caption = pool.submit(httpx.post, f"{url}/caption", files={"image": ("a.png", picture)}, timeout=60)
        time.sleep(0.5)  # the decode has begun
        began = time.perf_counter()
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        assert time.perf_counter() - began < 1.0  # not behind the 2 s decode
        assert caption.result().status_code == 200


def test_a_client_that_hangs_up_leaves_the_queue(model):
    app = create_app(model, window_ms=0)
    batcher, ran, entered, release = app.state.batcher, [], threading.Event(), threading.Event()
    run = batcher.run_group

    def recording_run(tasks, abandoned):
        ran.extend(t.text for t in tasks)
        entered.set()
        assert release.wait(60)
        return run(tasks, abandoned)

    batcher.run_group = recording_run
    with live_server(app) as url, ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, f"{url}/text", json={"prompt": "a red circle", "max_new_tokens": 2}, timeout=60)
        assert entered.wait(30)  # the first request holds the engine
        body = b'{"prompt": "a blue square", "max_new_tokens": 2}'
        head = (f"POST /text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        host, port = urlsplit(url).hostname, urlsplit(url).port
        with socket.create_connection((host, port)) as conn:  # queued behind it, then the client hangs up
            conn.sendall(head.encode() + body)
            deadline = time.monotonic() + 30
            while httpx.get(f"{url}/health").json()["waiting"] < 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        time.sleep(0.5)  # the server notices the hang-up
        release.set()
        assert first.result().status_code == 200
        after = httpx.post(f"{url}/text", json={"prompt": "a green triangle", "max_new_tokens": 2}, timeout=60)
        assert after.status_code == 200
        assert ran == ["a red circle", "a green triangle"]  # the abandoned request never ran
        assert httpx.get(f"{url}/health").json()["dropped"] == 1


def test_an_engine_call_stops_once_nobody_waits_for_it(model):
    steps = []
    model.engine.should_stop = lambda: steps.append(1) or len(steps) > 3
    try:
        with pytest.raises(Abandoned, match="after 3 of"):  # a stop id never drawn: only should_stop ends it early
            model.engine.generate([[model.vocab.bos]], max_new_tokens=40, params=SamplingParams(temperature=0), stop_ids=(-1,))
    finally:
        model.engine.should_stop = None
    assert len(model.engine.generate([[model.vocab.bos]], max_new_tokens=5, params=SamplingParams(temperature=0))[0]) > 0


def test_the_batcher_tells_a_running_call_when_its_callers_are_gone():
    asyncio.run(_abandon_scenario())


async def _abandon_scenario():
    seen = []

    def run_group(tasks, abandoned):  # a long call that looks up, as the engine does each step
        deadline = time.monotonic() + 10
        while not abandoned():
            assert time.monotonic() < deadline, "never told"
            time.sleep(0.01)
        seen.append("told")
        raise Abandoned("stopped")

    class Rows:
        rows, group = 1, "a"

    batcher = Batcher(run_group, window_s=0)
    worker = asyncio.ensure_future(batcher.run_forever())
    waiting = asyncio.ensure_future(batcher.submit(Rows()))
    await asyncio.sleep(0.2)  # the call has started
    waiting.cancel()  # its only caller gives up
    for _ in range(200):
        if seen:
            break
        await asyncio.sleep(0.02)
    worker.cancel()
    batcher.close()
    assert seen == ["told"] and batcher.abandoned_calls == 1


def test_a_dead_batch_worker_is_503_on_health_and_is_restarted(model):
    app = create_app(model, window_ms=0, restart_s=1.0)
    batcher, real = app.state.batcher, app.state.batcher._take_batch
    calls = {"n": 0}

    def dies_once():
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a fault in the worker itself")
        return real()

    batcher._take_batch = dies_once
    with live_server(app) as url, ThreadPoolExecutor(1) as pool:
        answer = pool.submit(httpx.post, f"{url}/text", json={"prompt": "a red circle", "max_new_tokens": 2}, timeout=60)
        statuses, deadline = set(), time.monotonic() + 10
        while not answer.done() and time.monotonic() < deadline:
            statuses.add(httpx.get(f"{url}/health").status_code)
            time.sleep(0.02)
        assert 503 in statuses  # said while the worker was down
        assert answer.result().status_code == 200  # served once it was back
        health = httpx.get(f"{url}/health")
        assert health.status_code == 200 and health.json()["worker_restarts"] == 1


def test_cross_site_posts_are_refused_unless_allowed(model):
    picture = {"image": ("a.png", png_bytes(np.full((48, 48, 3), 200, dtype=np.uint8)))}
    with live_server(create_app(model)) as url:
        host = urlsplit(url).netloc
        evil = httpx.post(f"{url}/caption", files=picture, headers={"Origin": "http://evil.example"}, timeout=60)
        assert evil.status_code == 403 and "cross-site" in evil.json()["error"]
        sandboxed = httpx.post(f"{url}/caption", files=picture, headers={"Origin": "null"}, timeout=60)
        assert sandboxed.status_code == 403
        own = httpx.post(f"{url}/caption", files=picture, headers={"Origin": f"http://{host}"}, timeout=60)
        assert own.status_code == 200  # the server's own page
        assert httpx.post(f"{url}/caption", files=picture, timeout=60).status_code == 200  # a script: no Origin
        assert httpx.get(f"{url}/health", headers={"Origin": "http://evil.example"}).status_code == 200
    with live_server(create_app(model, allow_origins=("http://lab.example",))) as url:
        lab = httpx.post(f"{url}/caption", files=picture, headers={"Origin": "http://lab.example"}, timeout=60)
        assert lab.status_code == 200 and lab.headers["access-control-allow-origin"] == "http://lab.example"
        assert httpx.post(f"{url}/caption", files=picture, headers={"Origin": "http://evil.example"}).status_code == 403


def test_a_500_says_internal_error_and_logs_the_detail(model, caplog):
    app = create_app(model, window_ms=0)

    def broken(tasks, abandoned):
        raise ValueError("secret detail: /home/someone/weights")

    app.state.batcher.run_group = broken
    with caplog.at_level(logging.ERROR, logger="ugen.serve"), live_server(app) as url:
        answer = httpx.post(f"{url}/text", json={"prompt": "a red circle"}, timeout=60)
    assert answer.status_code == 500 and answer.json() == {"error": "internal error"}
    assert "secret detail" in caplog.text
