"""`ugen serve`: a model directory behind an HTTP API and a web page.

    GET  /            the web page (static files, no build step)
    GET  /health      the model, the queue, the limits and defaults
    POST /caption     multipart: image [, temperature, top_k, top_p, seed]       -> {"caption"}
    POST /ask         multipart: image, question [, temperature, top_k, top_p, seed] -> {"answer"}
    POST /generate    JSON: prompt [, num, cfg, temperature, top_k, top_p, seed]  -> {"images": [base64 PNG],
                      "plans": [the layout each image was drawn from, or null where the model does not plan]}
    POST /text        JSON: prompt [, max_new_tokens, temperature, top_k, top_p, seed] -> {"text"}
                      with "images": true, text with images inside it -> {"parts": [{"text"} | {"image": base64 PNG}]}

Every answer also carries `seconds` (from arrival to answer) and `batch` (how many requests and
rows shared its engine call). The model is loaded once; requests go through one `Batcher`, so those
that arrive together share an engine call, each with its own seed. Bad input is a 4xx whose body is
one line, `{"error": "..."}`; a full queue is 503, a request past its time limit 504.

Against hostile and careless clients (issue 29; `benchmarks/serve_abuse.py` measures each):
- a body past its endpoint's limit is 413 before it is buffered (`Content-Length` first, then the
  stream is cut at the limit: FastAPI's `max_body_size`);
- an image's pixels are checked from its header before it is decoded (`max_pixels`, from the
  model's size), and decoding runs in worker threads, never on the event loop;
- a request whose client hung up, or whose time ran out, leaves the queue, and an engine call
  stops at its next step once none of its clients waits (`Engine.should_stop`);
- the batch worker is restarted if it dies, and `/health` answers 503 while it is down;
- a POST whose `Origin` is not this server's own is 403 (`allow_origins` opens it for named sites);
- a 500 says "internal error"; its detail goes to the server's log.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import logging
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import numpy as np
import PIL.Image
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from ugen.api import GENERATE_DEFAULTS, GREEDY, WRITE_DEFAULTS, UGen, load, read_image
from ugen.errors import UserError, one_line
from ugen.sampling import SamplingParams
from ugen.serve.batcher import Batcher, QueueFull
from ugen.serve.tasks import ANSWER_TOKENS, CAPTION_TOKENS, Task, run_group

STATIC = Path(__file__).parent / "static"
MAX_UPLOAD_BYTES = 8 * 2**20
UPLOAD_BODY_BYTES = MAX_UPLOAD_BYTES + 64 * 2**10  # an upload's body: the image and the form's other fields
JSON_BODY_BYTES = 64 * 2**10  # a 2,000-character prompt is at most ~12 KB of JSON, even all \u escapes
DECODE_THREADS = 2  # images decoded at once (each may hold max_pixels * 4 bytes while it is)
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
log = logging.getLogger("ugen.serve")
MAX_IMAGES = 16  # per generate request
MAX_NEW_TOKENS = 256
MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**63 - 1

# Field limits, shared by the JSON bodies and the multipart forms.
TEMPERATURE = dict(ge=0, le=5, description="0 is greedy")
TOP_K = dict(ge=0, description="keep the k likeliest ids (0: all)")
TOP_P = dict(gt=0, le=1, description="nucleus mass to keep (1: all)")
SEED = dict(ge=0, le=MAX_SEED)


class GenerateBody(BaseModel):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    num: int = Field(1, ge=1, le=MAX_IMAGES)
    cfg: float = Field(GENERATE_DEFAULTS.cfg, ge=0, le=20, description="classifier-free guidance scale (1: off)")
    temperature: float = Field(GENERATE_DEFAULTS.temperature, **TEMPERATURE)
    top_k: int = Field(GENERATE_DEFAULTS.top_k, **TOP_K)
    top_p: float = Field(GENERATE_DEFAULTS.top_p, **TOP_P)
    plan_temperature: float = Field(GENERATE_DEFAULTS.plan_temperature, **{**TEMPERATURE, "description":
                                    "temperature of the plan a model pretrained with --plan writes before it draws"})
    seed: int = Field(0, **SEED)


class TextBody(BaseModel):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    images: bool = Field(False, description="let the model draw images inside the text: answers `parts`")
    cfg: float = Field(GENERATE_DEFAULTS.cfg, ge=0, le=20, description="with images: their guidance scale")
    max_new_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS,
                                       description="default 64; with images, the rest of the model's length")
    temperature: float | None = Field(None, **{**TEMPERATURE, "description": "default 0 (greedy); with images, 1"})
    top_k: int = Field(GREEDY.top_k, **TOP_K)
    top_p: float = Field(GREEDY.top_p, **TOP_P)
    seed: int = Field(0, **SEED)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": one_line(message)}, status_code=status)


def _limit_of(request: Request) -> str:
    from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY

    limit = request.scope.get(MAX_BODY_SIZE_SCOPE_KEY)
    return f"{limit:,} bytes" if isinstance(limit, int) else "this server"


def _png(image: PIL.Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def default_max_pixels(image_size: int) -> int:
    """The most pixels an upload may have: 4096 x 4096 (a 16-megapixel photo; about 64 MB while it is
    decoded to RGBA) for models up to 256 px, 16 model sides a side above that."""
    return max(4096, 16 * image_size) ** 2


def read_upload(data: bytes, name: str, max_pixels: int, size: int) -> np.ndarray:
    """An uploaded file as the model's (size, size, 3) uint8 image, its dimensions checked from the
    header before anything is decoded: a few hundred KB of PNG can decode to gigabytes."""
    too_large = f"{name}: more than the {max_pixels / 1e6:.1f} megapixels this server decodes; downscale it first"
    try:
        image = PIL.Image.open(io.BytesIO(data))  # reads the header only
        width, height = image.size
        if width * height > max_pixels:
            raise HTTPException(413, f"{too_large} ({width}x{height} is {width * height / 1e6:.1f} megapixels)")
        image.load()
    except PIL.Image.DecompressionBombError:  # PIL's own guard, past twice its MAX_IMAGE_PIXELS, in open()
        raise HTTPException(413, too_large) from None
    except (OSError, SyntaxError, ValueError):
        raise UserError(f"{name}: not an image PIL can read") from None
    return read_image(image, size)


class RequestGuard:
    """Checks made from a request's head, before any of its body is read, for every request that
    could change or cost something (any method but GET, HEAD and OPTIONS):
    - 403 when its `Origin` names another site than this server: a web page the user visits may
      POST a form to localhost without a CORS preflight. Clients that send no `Origin` (curl,
      scripts) are not browsers acting for a page and pass; so do the `allowed` origins.
    - 413 when its declared `Content-Length` is past its endpoint's limit (`body_limit(path)`).
      FastAPI's own `max_body_size` (set to the same limits) cuts a body that declares no length
      as it streams in; its answer to a declared one has no JSON body, so it is made here."""

    def __init__(self, app, allowed: tuple[str, ...] = (), body_limit=lambda path: JSON_BODY_BYTES):
        self.app, self.allowed, self.body_limit = app, {o.rstrip("/") for o in allowed}, body_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            origin, length, limit = headers.get("origin"), headers.get("content-length", ""), self.body_limit(scope["path"])
            if origin is not None and origin not in self.allowed and not _same_origin(origin, headers.get("host"), scope):
                response = _error(403, f"cross-site request refused: the page at {origin} is not this server's; "
                                       "start the server with --allow-origin to allow a site")
                return await response(scope, receive, send)
            if length.isdigit() and int(length) > limit:
                return await _error(413, f"the request body is larger than this endpoint's limit of {limit:,} bytes")(
                    scope, receive, send)
        return await self.app(scope, receive, send)


def _same_origin(origin: str, host: str | None, scope) -> bool:
    parts = urlsplit(origin)  # "null" (a sandboxed page, a file) has no host: never the same
    return bool(parts.netloc) and host is not None and parts.netloc.lower() == host.lower() and parts.scheme == scope["scheme"]


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read: what arrives next is that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(model: UGen | str | os.PathLike, device: str = "auto", max_rows: int = 32, window_ms: float = 10,
               max_queue: int = 256, timeout_s: float = 60, allow_origins: tuple[str, ...] = (),
               max_pixels: int | None = None, restart_s: float = 1.0) -> FastAPI:
    """The app for a model (a loaded `UGen` or its directory, loaded here once). `allow_origins`:
    sites whose pages may call the API (cross-site requests are refused otherwise); `max_pixels`:
    the largest upload decoded (default from the model's size); `restart_s`: how long a dead batch
    worker stays down before it is restarted (doubling while it keeps dying, up to a minute)."""
    model = model if isinstance(model, UGen) else load(model, device)
    batcher = Batcher(lambda tasks, abandoned: run_group(model, tasks, abandoned), max_rows, window_ms / 1000, max_queue)
    max_pixels = max_pixels or default_max_pixels(model.image_size)
    decoding = asyncio.Semaphore(DECODE_THREADS)

    async def supervise() -> None:
        """Run the batch worker; if it dies, fail the batch it held, log why, and start it again."""
        delay = restart_s
        while True:
            began = time.monotonic()
            try:
                await batcher.run_forever()
            except Exception as err:
                log.error("the batch worker died; restarting it in %.1f s", delay, exc_info=err)
                batcher.fail_running(RuntimeError("the batch worker died"))
                batcher.restarts += 1
                await asyncio.sleep(delay)
                delay = restart_s if time.monotonic() - began > 60 else min(60.0, 2 * delay)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker = asyncio.create_task(supervise())
        yield
        worker.cancel()
        batcher.close()

    app = FastAPI(title="ugen", lifespan=lifespan, docs_url="/docs")
    app.state.batcher, app.state.model = batcher, model
    # Each POST route's body limit: JSON_BODY_BYTES, or UPLOAD_BODY_BYTES for an image. A declared
    # Content-Length past it is answered by the guard; a body that declares none is cut as it streams
    # in by FastAPI's `max_body_size` on the route (inside the guard, so that neither answers for the other).
    limits = {"/caption": UPLOAD_BODY_BYTES, "/ask": UPLOAD_BODY_BYTES, "/generate": JSON_BODY_BYTES, "/text": JSON_BODY_BYTES}
    app.add_middleware(RequestGuard, allowed=tuple(allow_origins), body_limit=lambda path: limits.get(path, JSON_BODY_BYTES))
    if allow_origins:  # the named sites' pages may also read the answers
        app.add_middleware(CORSMiddleware, allow_origins=list(allow_origins), allow_methods=["GET", "POST"],
                           allow_headers=["content-type"])

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"] if part not in ("body", "query", "form"))
        return _error(422, f"{where}: {first['msg']}" if where else first["msg"])

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        if err.status_code == 413 and err.detail == "Content Too Large":  # FastAPI's cut of a streamed body
            return _error(413, f"the request body is larger than this endpoint's limit of {_limit_of(request)}")
        return _error(err.status_code, str(err.detail))

    @app.exception_handler(UserError)
    async def bad_input(request: Request, err: UserError) -> JSONResponse:
        return _error(400, str(err))

    @app.exception_handler(QueueFull)
    async def busy(request: Request, err: QueueFull) -> JSONResponse:
        return _error(503, str(err))

    @app.exception_handler(Exception)
    async def crashed(request: Request, err: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=err)  # the detail stays here
        return _error(500, "internal error")

    def check_length(text: str, what: str, new_tokens: int) -> None:
        """A prompt that, with what is drawn after it, would run past the model's positions."""
        tokens = len(model.text_ids(text, what)) + new_tokens + 8  # the markers around it
        if tokens > model.max_len:
            raise UserError(f"the {what} is too long: {tokens} tokens with the answer, the model takes {model.max_len}")

    async def serve(task: Task, request: Request, started: float) -> tuple:
        """The task's result and what the answer says about its time and batch. A client that hangs
        up, or a time limit that runs out, takes the task out of the queue (or, once its batch
        runs, lets the batch stop when nobody else waits for it)."""
        answer = asyncio.ensure_future(batcher.submit(task))
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            done, _ = await asyncio.wait({answer, gone}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:  # this handler cancelled too (the server stopping): neither is left behind
            for waiting in (answer, gone):
                if not waiting.done():
                    waiting.cancel()
        if answer not in done:
            if gone in done:  # nobody reads this answer; nginx's code for it
                raise HTTPException(499, "the client closed the connection")
            raise HTTPException(504, f"the request took longer than the server's limit of {timeout_s:g} s")
        result, info = answer.result()
        return result, {"seconds": round(time.perf_counter() - started, 4),
                        "batch": {"requests": info.requests, "rows": info.rows}}

    async def image_task(kind: str, upload: UploadFile, params: SamplingParams, seed: int, question: str = "") -> Task:
        data = await upload.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise HTTPException(413, f"the image is larger than {MAX_UPLOAD_BYTES // 2**20} MiB")
        tokens = ANSWER_TOKENS if kind == "ask" else CAPTION_TOKENS
        if kind == "ask":
            check_length(question, "question", tokens + model.span_len)
        async with decoding:  # off the event loop: /health and every other request go on meanwhile
            image = await asyncio.to_thread(read_upload, data, upload.filename or "the upload", max_pixels, model.image_size)
        return Task(kind, params, seed, question, image, max_new_tokens=tokens)

    def sampling(temperature: float, top_k: int, top_p: float, cfg: float = 1.0,
                 plan_temperature: float = GENERATE_DEFAULTS.plan_temperature) -> SamplingParams:
        try:
            return SamplingParams(temperature, top_k, top_p, cfg, plan_temperature)
        except ValueError as err:
            raise UserError(str(err)) from None

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 while the batch worker runs; 503 while it is down (it is being restarted)."""
        return JSONResponse({
            "status": "ok" if batcher.alive else "batch worker down",
            "model": str(model.directory), "device": str(model.device),
            "image_size": model.image_size, "writes_images_in_text": model.trained_interleaved,
            "plans": model.plans,
            "waiting": len(batcher.waiting), "running": len(batcher.running), "running_abandoned_rows": batcher.abandoned_rows,
            "engine_calls": batcher.calls,
            "worker_restarts": batcher.restarts,
            "dropped": batcher.dropped, "abandoned_calls": batcher.abandoned_calls, "abandoned_tasks": batcher.abandoned_tasks,
            "limits": {"max_images": MAX_IMAGES, "max_new_tokens": MAX_NEW_TOKENS, "max_upload_bytes": MAX_UPLOAD_BYTES,
                       "max_pixels": max_pixels, "max_json_bytes": JSON_BODY_BYTES,
                       "max_rows": batcher.max_rows, "max_queue": batcher.max_queue, "timeout_s": timeout_s},
            "generate_defaults": {"cfg": GENERATE_DEFAULTS.cfg, "temperature": GENERATE_DEFAULTS.temperature},
        }, status_code=200 if batcher.alive else 503)

    @app.post("/caption", max_body_size=limits["/caption"])
    async def caption(
        request: Request,
        image: Annotated[UploadFile, File(description="an image file PIL reads")],
        temperature: Annotated[float, Form(**TEMPERATURE)] = GREEDY.temperature,
        top_k: Annotated[int, Form(**TOP_K)] = GREEDY.top_k,
        top_p: Annotated[float, Form(**TOP_P)] = GREEDY.top_p,
        seed: Annotated[int, Form(**SEED)] = 0,
    ):
        started = time.perf_counter()
        task = await image_task("caption", image, sampling(temperature, top_k, top_p), seed)
        text, meta = await serve(task, request, started)
        return {"caption": text, **meta}

    @app.post("/ask", max_body_size=limits["/ask"])
    async def ask(
        request: Request,
        image: Annotated[UploadFile, File(description="an image file PIL reads")],
        question: Annotated[str, Form(min_length=1, max_length=MAX_PROMPT_CHARS)],
        temperature: Annotated[float, Form(**TEMPERATURE)] = GREEDY.temperature,
        top_k: Annotated[int, Form(**TOP_K)] = GREEDY.top_k,
        top_p: Annotated[float, Form(**TOP_P)] = GREEDY.top_p,
        seed: Annotated[int, Form(**SEED)] = 0,
    ):
        started = time.perf_counter()
        task = await image_task("ask", image, sampling(temperature, top_k, top_p), seed, question)
        text, meta = await serve(task, request, started)
        return {"answer": text, **meta}

    @app.post("/generate", max_body_size=limits["/generate"])
    async def generate(body: GenerateBody, request: Request):
        started = time.perf_counter()
        check_length(body.prompt, "prompt", model.span_len + 1)
        task = Task("generate", sampling(body.temperature, body.top_k, body.top_p, body.cfg, body.plan_temperature),
                    body.seed, body.prompt,
                    num=body.num)
        (images, plans), meta = await serve(task, request, started)
        return {"images": [_png(i) for i in images], "plans": plans, **meta}

    @app.post("/text", max_body_size=limits["/text"])
    async def text(body: TextBody, request: Request):
        started = time.perf_counter()
        temperature = body.temperature if body.temperature is not None else (WRITE_DEFAULTS if body.images else GREEDY).temperature
        params = sampling(temperature, body.top_k, body.top_p)
        if body.images:
            model.write_prompt(body.prompt)  # a prompt with no room left is refused here, not in the batch
            task = Task("write", params, body.seed, body.prompt, max_new_tokens=body.max_new_tokens or model.max_len,
                        image_params=dataclasses.replace(GENERATE_DEFAULTS, cfg=body.cfg))
        else:
            check_length(body.prompt, "prompt", body.max_new_tokens or 64)
            task = Task("text", params, body.seed, body.prompt, max_new_tokens=body.max_new_tokens or 64)
        out, meta = await serve(task, request, started)
        if body.images:
            return {"parts": [{"text": p} if isinstance(p, str) else {"image": _png(p)} for p in out], **meta}
        return {"text": out, **meta}

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
