"""`ugen serve` against hostile clients, while well-behaved ones are served beside them.

    python benchmarks/serve_abuse.py --model runs/default/model            # after `make pretrain`

Starts `ugen serve` in its own process (as a user runs it), learns what a set of well-behaved
requests is answered when each is sent alone, and then runs each hostile case while those requests
are sent again from --clients threads and /health is asked every 100 ms:
- upload_64MiB: a 64 MiB multipart upload to /caption (its length declared, then the bytes sent);
- json_64MiB: a 64 MiB JSON body to /generate, declared; json_64MiB_chunked: the same with no
  declared length (chunked), so that it can only be cut as it streams in;
- bomb: a PNG of 12,000 x 12,000 pixels of one colour (a few hundred KB; 432 MB as RGB);
- largest_accepted: a PNG just inside the server's pixel limit, which it decodes and captions;
- cross_site: a POST to /caption from another site's page (an `Origin` that is not the server's);
- hang_ups: a dozen clients that each ask for 16 images and hang up half a second later.

For each case: the status it got, the server's peak RSS growth over its RSS before the case
(VmHWM after resetting it through /proc/PID/clear_refs, Linux), the slowest /health answer during
it, and for hang_ups how long after the hang-ups every one of their tasks had left the queue or
had its engine call stopped. The well-behaved
answers must all equal their answers alone (the load benchmark's check). Appends to
benchmarks/results.jsonl unless --no-save; exits non-zero when a target of issue 29 fails.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from serve_load import answer_of, make_requests, post, server_args, start_server  # benchmarks/ is first on sys.path
from speed import report

MIB = 2**20
HANG_UPS = 12
TARGETS = {"body_rss_mib": 150, "bomb_rss_mib": 300, "health_s": 2.0, "rid_of_hang_ups_s": 5.0}


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"/proc/{pid}/status has no {field} (Linux only)")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS now


def bomb_png(width: int, height: int) -> bytes:
    """One colour, RGB, written row by row through zlib (never held whole)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    squeeze, row = zlib.compressobj(9), b"\0" + b"\x80" * (3 * width)
    parts = [squeeze.compress(row) for _ in range(height)] + [squeeze.flush()]
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def raw_post(url: str, path: str, headers: dict, body_bytes: int = 0, chunked: bool = False) -> int | None:
    """POST over a plain socket: the head, then `body_bytes` of filler (chunked if asked), stopping
    at the first send error (a server that answered early closes); the answer's status (None if
    the server closed without one)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=120) as conn:
        head = f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {body_bytes}\r\n\r\n"
        try:
            conn.sendall(head.encode())
            piece, sent = b"{" + b"x" * (MIB - 1), 0
            while sent < body_bytes:
                conn.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
                sent += len(piece)
        except OSError:
            pass
        answer = b""
        while b"\r\n" not in answer:
            data = conn.recv(4096)
            if not data:
                return None
            answer += data
        return int(answer.split(b" ", 2)[1])


class Background:
    """/health every 100 ms (slowest answer, statuses) and the well-behaved requests from `clients`
    threads, in a loop (answers compared with `expected`), until stopped."""

    def __init__(self, url: str, requests: list, expected: list, clients: int):
        self.url, self.requests, self.expected = url, requests, expected
        self.stop, self.health_max, self.statuses = threading.Event(), 0.0, set()
        self.equal = self.total = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.probe)] + [
            threading.Thread(target=self.client, args=(k, clients)) for k in range(clients)]

    def probe(self) -> None:
        while not self.stop.is_set():
            began = time.perf_counter()
            try:
                status = httpx.get(self.url + "/health", timeout=30).status_code
            except httpx.TransportError:
                status = "no answer"
            with self.lock:
                self.health_max = max(self.health_max, time.perf_counter() - began)
                self.statuses.add(status)
            time.sleep(0.1)

    def client(self, k: int, clients: int) -> None:
        i = k
        while not self.stop.is_set():
            _, body = post(self.url, self.requests[i % len(self.requests)])
            with self.lock:
                self.equal += answer_of(body) == self.expected[i % len(self.requests)]
                self.total += 1
            i += clients

    def __enter__(self) -> "Background":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


def rid_of(url: str, since: float, before: dict, hung_up: int, limit: float = 60.0) -> tuple[float, int]:
    """Seconds from `since` until every hung-up client's task has left the queue or had its call
    stopped (the well-behaved clients keep the server busy meanwhile, so it is never idle), and how
    many of them were so accounted for (one that was answered before its client left is not)."""
    gone = 0
    while time.monotonic() - since < limit:
        health = httpx.get(url + "/health", timeout=30).json()
        gone = health["dropped"] - before["dropped"] + health["abandoned_tasks"] - before["abandoned_tasks"]
        if gone >= hung_up:
            return time.monotonic() - since, gone
        time.sleep(0.05)
    return float("inf"), gone


def main() -> None:
    args = server_args(__doc__.split("\n\n")[0], clients=4)  # well-behaved clients beside each case

    server, url = start_server(args)
    pid, cases = server.pid, {}
    try:
        health = httpx.get(url + "/health").json()
        requests = make_requests(health["image_size"])[:16]  # four of each kind
        expected = [answer_of(post(url, r)[1]) for r in requests]  # alone (and the warm-up)
        side = int(health["limits"]["max_pixels"] ** 0.5) - 16
        multipart = {"Content-Type": "multipart/form-data; boundary=ugenabuse"}
        json_head = {"Content-Type": "application/json"}
        picture = next(kwargs["files"]["image"] for path, kwargs in requests if path == "/caption")

        def hang_ups() -> None:
            body = b'{"prompt": "three purple circles", "num": 16, "seed": 7}'
            threads = [threading.Thread(target=_hang_up, args=(url, body)) for _ in range(HANG_UPS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        plan = {
            "upload_64MiB": lambda: raw_post(url, "/caption", multipart, 64 * MIB),
            "json_64MiB": lambda: raw_post(url, "/generate", json_head, 64 * MIB),
            "json_64MiB_chunked": lambda: raw_post(url, "/generate", json_head, 64 * MIB, chunked=True),
            "bomb": lambda: httpx.post(url + "/caption", files={"image": ("bomb.png", bomb_png(12000, 12000))},
                                       timeout=120).status_code,
            "largest_accepted": lambda: httpx.post(url + "/caption", files={"image": ("big.png", bomb_png(side, side))},
                                                   timeout=300).status_code,
            "cross_site": lambda: httpx.post(url + "/caption", files={"image": picture},
                                             headers={"Origin": "http://evil.example"}, timeout=60).status_code,
            "hang_ups": hang_ups,
        }
        for name, run in plan.items():
            with Background(url, requests, expected, args.clients) as background:
                time.sleep(0.5)  # the well-behaved load is running
                before, counts = rss_mib(pid), httpx.get(url + "/health").json()
                reset_peak(pid)
                began = time.perf_counter()
                status = run()
                seconds = time.perf_counter() - began
                case = {"status": status, "seconds": round(seconds, 2),
                        "rss_growth_mib": round(rss_mib(pid, "VmHWM") - before, 1)}
                if name == "hang_ups":
                    rid_s, gone = rid_of(url, time.monotonic(), counts, HANG_UPS)
                    case.update(rid_of_them_after_s=round(rid_s, 2), hung_up_tasks_accounted=f"{gone}/{HANG_UPS}")
                time.sleep(0.3)
            case.update(health_max_s=round(background.health_max, 3), health_statuses=sorted(map(str, background.statuses)),
                        well_behaved_equal=f"{background.equal}/{background.total}")
            cases[name] = case
            print(name, case, flush=True)
    finally:
        server.terminate()
        server.wait(30)

    bodies = ("upload_64MiB", "json_64MiB", "json_64MiB_chunked")
    held = {
        "bodies_413": all(cases[c]["status"] == 413 for c in bodies),
        "bomb_4xx": 400 <= (cases["bomb"]["status"] or 0) < 500,
        "cross_site_403": cases["cross_site"]["status"] == 403,
        "bodies_rss": all(cases[c]["rss_growth_mib"] < TARGETS["body_rss_mib"] for c in bodies),
        "bomb_rss": max(cases["bomb"]["rss_growth_mib"], cases["largest_accepted"]["rss_growth_mib"]) < TARGETS["bomb_rss_mib"],
        "health": all(c["health_max_s"] < TARGETS["health_s"] and c["health_statuses"] == ["200"] for c in cases.values()),
        "rid_of_hang_ups": cases["hang_ups"]["rid_of_them_after_s"] < TARGETS["rid_of_hang_ups_s"],
        "well_behaved_equal": all(c["well_behaved_equal"].split("/")[0] == c["well_behaved_equal"].split("/")[1]
                                  for c in cases.values()),
    }
    result = {"benchmark": "serve_abuse", "device": f"{health['device']} ({os.cpu_count()} cores)", "model": args.model,
              "clients": args.clients, "max_pixels": health["limits"]["max_pixels"], "cases": cases,
              "targets": TARGETS, "held": held}
    report(result, save=not args.no_save, indent=2)
    if not all(held.values()):
        raise SystemExit("targets not held: " + ", ".join(k for k, v in held.items() if not v))


def _hang_up(url: str, body: bytes) -> None:
    """A client that asks for a drawing and hangs up before it is answered."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as conn:
        conn.sendall(f"POST /generate HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.5)


if __name__ == "__main__":
    main()
