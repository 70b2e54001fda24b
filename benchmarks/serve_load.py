"""`ugen serve` under load: 64 concurrent clients of mixed kinds against a live server, against the
same requests served one at a time.

    python benchmarks/serve_load.py --model runs/default/model            # after `make pretrain`

Starts `ugen serve` in its own process (a live server, as a user runs it), warms it with one request
of each kind, then sends the requests (captions and questions about Shapes test scenes, drawings
of GenEval-style prompts with their own seeds, text continuations) one at a time, and then all at
once from --clients threads, --rounds times. Every concurrent answer must equal the answer the same
request got alone (a seed gives the same image batched or not); the figures are p50 / p95 latency
and throughput (requests per second) for both, and the speedup from batching (the median round).
Appends to benchmarks/results.jsonl unless --no-save.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import PIL.Image

from speed import report  # benchmarks/ is the script's directory, first on sys.path

from ugen.shapes import questions, render, sample_scene

PROMPTS = ["a red circle", "two blue squares", "a green triangle left of a yellow circle", "three purple circles",
           "a small orange square", "a blue circle above a red triangle", "two green circles", "a yellow square"]
TEXTS = ["a red circle", "There are two shapes", "the blue square is", "Three circles"]
MIX = {"generate": 24, "caption": 16, "ask": 16, "text": 8}  # 64 requests


def png(image) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def make_requests(image_size: int, seed: int = 0) -> list[tuple[str, dict]]:
    """(kind, httpx keyword arguments) for every request of MIX, interleaved by kind."""
    rng = random.Random(seed)
    by_kind = {kind: [] for kind in MIX}
    for i in range(MIX["generate"]):
        by_kind["generate"].append(("/generate", {"json": {"prompt": PROMPTS[i % len(PROMPTS)], "seed": i}}))
    for i in range(MIX["caption"] + MIX["ask"]):
        scene = sample_scene(rng)
        files = {"image": (f"scene{i}.png", png(render(scene, image_size)), "image/png")}
        if i < MIX["caption"]:
            by_kind["caption"].append(("/caption", {"files": files}))
        else:
            question = rng.choice(questions(scene, rng))[0]
            by_kind["ask"].append(("/ask", {"files": files, "data": {"question": question}}))
    for i in range(MIX["text"]):
        by_kind["text"].append(("/text", {"json": {"prompt": TEXTS[i % len(TEXTS)], "max_new_tokens": 32}}))
    interleaved = []
    while any(by_kind.values()):
        for kind in MIX:
            if by_kind[kind]:
                interleaved.append(by_kind[kind].pop(0))
    return interleaved


def answer_of(body: dict):
    """What a request was answered, without its timing."""
    return {k: v for k, v in body.items() if k not in ("seconds", "batch")}


def post(url: str, request: tuple[str, dict]) -> tuple[float, dict]:
    path, kwargs = request
    started = time.perf_counter()
    response = httpx.post(url + path, timeout=600, **kwargs)
    if response.status_code != 200:
        raise SystemExit(f"{path}: HTTP {response.status_code}: {response.text}")
    return time.perf_counter() - started, response.json()


def concurrent(url: str, requests: list, clients: int) -> tuple[float, list[float], list[dict]]:
    """All requests at once, `clients` at a time (each client sends its share in turn)."""
    latencies, bodies = [0.0] * len(requests), [None] * len(requests)
    start = threading.Barrier(clients)

    def client(k: int) -> None:
        start.wait()
        for i in range(k, len(requests), clients):
            latencies[i], bodies[i] = post(url, requests[i])

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - began, latencies, bodies


def summary(seconds: float, latencies: list[float]) -> dict:
    cuts = statistics.quantiles(latencies, n=20)
    return {"seconds": round(seconds, 3), "requests_per_second": round(len(latencies) / seconds, 3),
            "p50_s": round(statistics.median(latencies), 3), "p95_s": round(cuts[18], 3)}


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "ugen.cli", "serve", "--model", args.model, "--device", args.device,
                               "--port", str(port), "--max-rows", str(args.max_rows), "--max-queue", "1024",
                               "--timeout", "600"])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(url + "/health").status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the server did not start")
        time.sleep(0.2)


def server_args(description: str, clients: int, **extra: dict) -> argparse.Namespace:
    """The flags of a benchmark against a live server (`extra`: its own, name -> add_argument
    keywords), parsed, with the model directory checked."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="runs/default/model", help="model directory")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--clients", type=int, default=clients, help="clients sending at once")
    for name, keywords in extra.items():
        parser.add_argument(name, **keywords)
    parser.add_argument("--max-rows", type=int, default=32, help="the server's --max-rows")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    if not (Path(args.model) / "ugen.json").is_file():
        raise SystemExit(f"{args.model}: not a ugen model directory (run `make pretrain` first)")
    return args


def main() -> None:
    args = server_args(__doc__.split("\n\n")[0], clients=64,
                       **{"--rounds": dict(type=int, default=3, help="concurrent rounds (the median is reported)")})

    server, url = start_server(args)
    try:
        health = httpx.get(url + "/health").json()
        requests = make_requests(health["image_size"])
        for kind in ("/generate", "/caption", "/ask", "/text"):  # warm-up: first calls allocate
            post(url, next(r for r in requests if r[0] == kind))

        began = time.perf_counter()
        alone = [post(url, r) for r in requests]
        sequential = summary(time.perf_counter() - began, [t for t, _ in alone])
        expected = [answer_of(body) for _, body in alone]

        rounds, equal, batch_sizes = [], 0, []
        for _ in range(args.rounds):
            seconds, latencies, bodies = concurrent(url, requests, args.clients)
            rounds.append(summary(seconds, latencies))
            equal += sum(answer_of(b) == e for b, e in zip(bodies, expected))
            batch_sizes += [b["batch"]["requests"] for b in bodies]
        median = sorted(rounds, key=lambda r: r["seconds"])[len(rounds) // 2]
        images = [base64.b64decode(img) for body in expected if "images" in body for img in body["images"]]
        result = {
            "benchmark": "serve_load", "device": f"{health['device']} ({os.cpu_count()} cores)", "model": args.model,
            "clients": args.clients, "requests": len(requests), "mix": MIX, "max_rows": args.max_rows,
            "sequential": sequential, "concurrent": median, "concurrent_rounds": rounds,
            "speedup": round(sequential["seconds"] / median["seconds"], 2),
            "answers_equal_to_alone": f"{equal}/{len(requests) * args.rounds}",
            "mean_requests_per_batch": round(statistics.mean(batch_sizes), 2),
            "images_are_pngs_of_the_model_size": all(PIL.Image.open(io.BytesIO(i)).size == (health["image_size"],) * 2
                                                     for i in images),
        }
    finally:
        server.terminate()
        server.wait(30)
    report(result, save=not args.no_save, indent=2)
    if equal != len(requests) * args.rounds:
        raise SystemExit("some answers under load differ from the same request served alone")


if __name__ == "__main__":
    main()
