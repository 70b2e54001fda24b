"""`ugen serve`: the endpoints against the Python API, batching that keeps each request's seed, the
bad inputs, the queue bound and the time limit, on a live server (uvicorn in a thread)."""

from __future__ import annotations

import asyncio
import base64
import io
import random
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import PIL.Image
import pytest

import ugen
from ugen.api import GENERATE_DEFAULTS, GREEDY
from ugen.sampling import SamplingParams
from ugen.serve import create_app
from ugen.serve.app import MAX_UPLOAD_BYTES
from ugen.serve.batcher import Batcher, QueueFull
from ugen.serve.tasks import Task, run_group
from ugen.shapes import render, sample_scene

from conftest import live_server


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return ugen.load(tiny_model_dir)


@pytest.fixture(scope="module")
def pictures(model) -> list[np.ndarray]:
    rng = random.Random(3)
    return [render(sample_scene(rng), model.image_size) for _ in range(3)]


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png(data: str) -> np.ndarray:
    return np.asarray(PIL.Image.open(io.BytesIO(base64.b64decode(data))))


@pytest.fixture(scope="module")
def server(model):
    """A server whose batches wait 100 ms for company, so that requests sent together share one."""
    with live_server(create_app(model, window_ms=100)) as url:
        yield url


def test_ugen_serve_starts_a_server_from_the_command_line(tiny_model_dir):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "ugen.cli", "serve", "--model", str(tiny_model_dir), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health").json()
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read() if server.poll() else "no answer"
                time.sleep(0.2)
        assert health["status"] == "ok" and health["model"] == str(tiny_model_dir)
        assert httpx.get(f"http://127.0.0.1:{port}/").text.startswith("<!doctype html>")
    finally:
        server.terminate()
        server.wait(30)


def test_endpoints_answer_what_the_python_api_gives(server, model, pictures):
    image = png_bytes(pictures[0])
    with httpx.Client(base_url=server, timeout=60) as client:
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["image_size"] == model.image_size

        answer = client.post("/caption", files={"image": ("scene.png", image, "image/png")}).json()
        assert answer["caption"] == model.caption([pictures[0]])[0]
        assert answer["seconds"] > 0 and answer["batch"] == {"requests": 1, "rows": 1}

        answer = client.post("/ask", files={"image": ("scene.png", image)}, data={"question": "how many circles are there?"})
        assert answer.json()["answer"] == model.ask(pictures[0], "how many circles are there?")

        answer = client.post("/text", json={"prompt": "a red circle", "max_new_tokens": 12, "temperature": 1.0, "seed": 4})
        assert answer.json()["text"] == model.complete("a red circle", SamplingParams(temperature=1.0), 4, 12)

        answer = client.post("/generate", json={"prompt": "a blue square", "num": 2, "seed": 9}).json()
        expected, plans = model.generate_with_plans("a blue square", 2, GENERATE_DEFAULTS, 9)
        assert len(answer["images"]) == 2 and answer["batch"] == {"requests": 1, "rows": 2}
        assert answer["plans"] == plans and health["plans"] is True  # Shapes models plan by default
        for got, want in zip(answer["images"], expected):
            np.testing.assert_array_equal(decode_png(got), np.asarray(want))


def test_requests_sent_together_share_a_batch_and_keep_their_seeds(server, model):
    requests = [("a red circle", 1, 0), ("a red circle", 2, 1), ("two green triangles", 1, 2), ("a blue square", 3, 0)]
    alone = [model.generate(prompt, num, GENERATE_DEFAULTS, seed) for prompt, num, seed in requests]

    def post(request):
        prompt, num, seed = request
        return httpx.post(f"{server}/generate", json={"prompt": prompt, "num": num, "seed": seed}, timeout=60).json()

    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(post, requests))
    assert max(a["batch"]["requests"] for a in answers) > 1, "no two requests shared an engine call"
    for answer, want in zip(answers, alone):
        assert len(answer["images"]) == len(want)
        for got, image in zip(answer["images"], want):
            np.testing.assert_array_equal(decode_png(got), np.asarray(image))
    # the seeds matter: the same prompt with seeds 0 and 1 drew different images
    assert not np.array_equal(np.asarray(alone[0][0]), np.asarray(alone[1][0]))


def test_captions_answers_and_continuations_in_one_call_match_each_alone(model, pictures):
    sampled = SamplingParams(temperature=1.0)
    tasks = [Task("caption", sampled, 0, image=pictures[0]), Task("ask", sampled, 1, "what color is it?", pictures[1], max_new_tokens=16),
             Task("text", sampled, 2, "a small", max_new_tokens=5), Task("caption", sampled, 3, image=pictures[2])]
    together = run_group(model, tasks)
    assert together == [
        model.caption([pictures[0]], sampled, 0)[0], model.ask(pictures[1], "what color is it?", sampled, 1),
        model.complete("a small", sampled, 2, 5), model.caption([pictures[2]], sampled, 3)[0],
    ]
    with pytest.raises(ValueError, match="different groups"):
        run_group(model, [tasks[0], Task("caption", GREEDY, 0, image=pictures[0])])


BAD_INPUTS = [  # (method, path, request kwargs, status, a piece of the message)
    ("post", "/caption", {"files": {"image": ("notes.txt", b"not an image at all", "text/plain")}}, 400, "not an image"),
    ("post", "/caption", {"data": {"seed": "1"}}, 422, "image"),
    ("post", "/caption", {"files": {"image": ("big.png", b"0" * (MAX_UPLOAD_BYTES + 1))}}, 413, "larger than"),
    ("post", "/ask", {"files": {"image": ("scene.png", "PICTURE")}, "data": {"question": "   "}}, 400, "question is empty"),
    ("post", "/ask", {"files": {"image": ("scene.png", "PICTURE")}}, 422, "question"),
    ("post", "/generate", {"json": {"prompt": ""}}, 422, "prompt"),
    ("post", "/generate", {"json": {"prompt": "  "}}, 400, "prompt is empty"),
    ("post", "/generate", {"json": {"prompt": "a red circle", "num": 0}}, 422, "num"),
    ("post", "/generate", {"json": {"prompt": "a red circle", "num": 17}}, 422, "num"),
    ("post", "/generate", {"json": {"prompt": "a red circle", "cfg": -1}}, 422, "cfg"),
    ("post", "/generate", {"json": {"prompt": "a red circle", "temperature": 9}}, 422, "temperature"),
    ("post", "/generate", {"json": {"prompt": "a red circle", "top_p": 0}}, 422, "top_p"),
    ("post", "/generate", {"json": {"prompt": "a red circle", "seed": -1}}, 422, "seed"),
    ("post", "/generate", {"json": {"prompt": "x" * 2001}}, 422, "prompt"),
    ("post", "/generate", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, "JSON"),
    ("post", "/text", {"json": {"prompt": "a red circle " * 150}}, 400, "too long"),
    ("post", "/text", {"json": {"prompt": "a", "max_new_tokens": 1000}}, 422, "max_new_tokens"),
    ("get", "/nowhere", {}, 404, "Not Found"),
]


@pytest.mark.parametrize("method, path, kwargs, status, message", BAD_INPUTS, ids=[f"{b[1]}-{b[3]}-{b[4]}" for b in BAD_INPUTS])
def test_bad_input_is_a_4xx_with_one_line_and_the_server_keeps_serving(server, pictures, method, path, kwargs, status, message):
    if "PICTURE" in str(kwargs.get("files")):
        kwargs = {**kwargs, "files": {"image": ("scene.png", png_bytes(pictures[0]))}}
    response = httpx.request(method.upper(), f"{server}{path}", timeout=60, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and message in body["error"] and "\n" not in body["error"]
    assert httpx.post(f"{server}/text", json={"prompt": "a", "max_new_tokens": 1}, timeout=60).status_code == 200


def blocked(app) -> tuple[threading.Event, threading.Event]:
    """Make the app's engine calls wait for a release: (entered, release)."""
    batcher, entered, release = app.state.batcher, threading.Event(), threading.Event()
    run = batcher.run_group

    def waiting_run(tasks, abandoned):
        entered.set()
        assert release.wait(60)
        return run(tasks, abandoned)

    batcher.run_group = waiting_run
    return entered, release


def test_a_full_queue_answers_503_and_the_rest_are_served(model):
    app = create_app(model, max_queue=2, window_ms=0)
    entered, release = blocked(app)
    body = {"prompt": "a red circle", "max_new_tokens": 2}
    with live_server(app) as url, ThreadPoolExecutor(3) as pool:
        running = pool.submit(httpx.post, f"{url}/text", json=body, timeout=60)
        assert entered.wait(30)  # the first request holds the engine
        queued = [pool.submit(httpx.post, f"{url}/text", json=body, timeout=60) for _ in range(2)]
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/health").json()["waiting"] < 2:
            assert time.monotonic() < deadline, "the two requests never queued"
            time.sleep(0.02)
        refused = httpx.post(f"{url}/text", json=body, timeout=60)
        assert refused.status_code == 503 and "busy" in refused.json()["error"]
        release.set()
        assert [f.result().status_code for f in [running, *queued]] == [200, 200, 200]


def test_a_request_past_the_time_limit_answers_504_and_the_server_recovers(model):
    app = create_app(model, timeout_s=0.5, window_ms=0)
    entered, release = blocked(app)
    with live_server(app) as url:
        late = httpx.post(f"{url}/text", json={"prompt": "a red circle"}, timeout=60)
        assert late.status_code == 504 and "0.5 s" in late.json()["error"]
        release.set()
        answer = httpx.post(f"{url}/text", json={"prompt": "a red circle", "max_new_tokens": 3}, timeout=60)
        assert answer.status_code == 200 and answer.json()["text"] == model.complete("a red circle", max_new_tokens=3)


class Rows:
    def __init__(self, rows: int, group: str):
        self.rows, self.group = rows, group


def test_the_batcher_takes_the_oldest_group_up_to_its_row_limit():
    asyncio.run(_batcher_scenario())


async def _batcher_scenario():
    calls = []
    batcher = Batcher(lambda tasks, abandoned: calls.append([(t.group, t.rows) for t in tasks]) or [t.rows for t in tasks],
                      max_rows=4, window_s=0, max_queue=5)
    tasks = [Rows(2, "a"), Rows(1, "b"), Rows(2, "a"), Rows(1, "a"), Rows(3, "b")]
    waiting = [asyncio.ensure_future(batcher.submit(t)) for t in tasks]
    await asyncio.sleep(0)  # all five are queued before the loop starts
    with pytest.raises(QueueFull):
        await batcher.submit(Rows(1, "a"))
    worker = asyncio.ensure_future(batcher.run_forever())
    results = await asyncio.gather(*waiting)
    worker.cancel()
    batcher.close()
    # a: 2 + 2 fit in 4 rows, the third a (1 row) would not; then b: 1 + 3; then the last a
    assert calls == [[("a", 2), ("a", 2)], [("b", 1), ("b", 3)], [("a", 1)]]
    assert [r for r, _ in results] == [2, 1, 2, 1, 3]
    assert [info.requests for _, info in results] == [2, 2, 2, 1, 2]
