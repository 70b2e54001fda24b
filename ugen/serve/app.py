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
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import PIL.Image
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
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


def _png(image: PIL.Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def create_app(model: UGen | str | os.PathLike, device: str = "auto", max_rows: int = 32, window_ms: float = 10,
               max_queue: int = 256, timeout_s: float = 60) -> FastAPI:
    """The app for a model (a loaded `UGen` or its directory, loaded here once)."""
    model = model if isinstance(model, UGen) else load(model, device)
    batcher = Batcher(lambda tasks: run_group(model, tasks), max_rows, window_ms / 1000, max_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker = asyncio.create_task(batcher.run_forever())
        yield
        worker.cancel()
        batcher.close()

    app = FastAPI(title="ugen", lifespan=lifespan, docs_url="/docs")
    app.state.batcher, app.state.model = batcher, model

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"] if part not in ("body", "query", "form"))
        return _error(422, f"{where}: {first['msg']}" if where else first["msg"])

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return _error(err.status_code, str(err.detail))

    @app.exception_handler(UserError)
    async def bad_input(request: Request, err: UserError) -> JSONResponse:
        return _error(400, str(err))

    @app.exception_handler(QueueFull)
    async def busy(request: Request, err: QueueFull) -> JSONResponse:
        return _error(503, str(err))

    @app.exception_handler(Exception)
    async def crashed(request: Request, err: Exception) -> JSONResponse:
        return _error(500, f"internal error: {type(err).__name__}: {err}")

    def check_length(text: str, what: str, new_tokens: int) -> None:
        """A prompt that, with what is drawn after it, would run past the model's positions."""
        tokens = len(model.text_ids(text, what)) + new_tokens + 8  # the markers around it
        if tokens > model.max_len:
            raise UserError(f"the {what} is too long: {tokens} tokens with the answer, the model takes {model.max_len}")

    async def serve(task: Task, started: float) -> tuple:
        """The task's result and what the answer says about its time and batch."""
        try:
            result, info = await asyncio.wait_for(batcher.submit(task), timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(504, f"the request took longer than the server's limit of {timeout_s:g} s") from None
        return result, {"seconds": round(time.perf_counter() - started, 4),
                        "batch": {"requests": info.requests, "rows": info.rows}}

    async def image_task(kind: str, upload: UploadFile, params: SamplingParams, seed: int, question: str = "") -> Task:
        data = await upload.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise HTTPException(413, f"the image is larger than {MAX_UPLOAD_BYTES // 2**20} MiB")
        try:
            image = PIL.Image.open(io.BytesIO(data))
            image.load()
        except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError):
            raise UserError(f"{upload.filename or 'the upload'}: not an image PIL can read") from None
        tokens = ANSWER_TOKENS if kind == "ask" else CAPTION_TOKENS
        if kind == "ask":
            check_length(question, "question", tokens + model.span_len)
        return Task(kind, params, seed, question, read_image(image, model.image_size), max_new_tokens=tokens)

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
    async def health() -> dict:
        return {
            "status": "ok", "model": str(model.directory), "device": str(model.device),
            "image_size": model.image_size, "writes_images_in_text": model.trained_interleaved,
            "plans": model.plans,
            "waiting": len(batcher.waiting), "engine_calls": batcher.calls,
            "limits": {"max_images": MAX_IMAGES, "max_new_tokens": MAX_NEW_TOKENS, "max_upload_bytes": MAX_UPLOAD_BYTES,
                       "max_rows": batcher.max_rows, "max_queue": batcher.max_queue, "timeout_s": timeout_s},
            "generate_defaults": {"cfg": GENERATE_DEFAULTS.cfg, "temperature": GENERATE_DEFAULTS.temperature},
        }

    @app.post("/caption")
    async def caption(
        image: Annotated[UploadFile, File(description="an image file PIL reads")],
        temperature: Annotated[float, Form(**TEMPERATURE)] = GREEDY.temperature,
        top_k: Annotated[int, Form(**TOP_K)] = GREEDY.top_k,
        top_p: Annotated[float, Form(**TOP_P)] = GREEDY.top_p,
        seed: Annotated[int, Form(**SEED)] = 0,
    ):
        started = time.perf_counter()
        task = await image_task("caption", image, sampling(temperature, top_k, top_p), seed)
        text, meta = await serve(task, started)
        return {"caption": text, **meta}

    @app.post("/ask")
    async def ask(
        image: Annotated[UploadFile, File(description="an image file PIL reads")],
        question: Annotated[str, Form(min_length=1, max_length=MAX_PROMPT_CHARS)],
        temperature: Annotated[float, Form(**TEMPERATURE)] = GREEDY.temperature,
        top_k: Annotated[int, Form(**TOP_K)] = GREEDY.top_k,
        top_p: Annotated[float, Form(**TOP_P)] = GREEDY.top_p,
        seed: Annotated[int, Form(**SEED)] = 0,
    ):
        started = time.perf_counter()
        task = await image_task("ask", image, sampling(temperature, top_k, top_p), seed, question)
        text, meta = await serve(task, started)
        return {"answer": text, **meta}

    @app.post("/generate")
    async def generate(body: GenerateBody):
        started = time.perf_counter()
        check_length(body.prompt, "prompt", model.span_len + 1)
        task = Task("generate", sampling(body.temperature, body.top_k, body.top_p, body.cfg, body.plan_temperature),
                    body.seed, body.prompt,
                    num=body.num)
        (images, plans), meta = await serve(task, started)
        return {"images": [_png(i) for i in images], "plans": plans, **meta}

    @app.post("/text")
    async def text(body: TextBody):
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
        out, meta = await serve(task, started)
        if body.images:
            return {"parts": [{"text": p} if isinstance(p, str) else {"image": _png(p)} for p in out], **meta}
        return {"text": out, **meta}

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
