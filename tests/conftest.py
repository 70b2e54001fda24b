"""Shared fixtures: one tiny run directory (tokenizers + a few pretraining steps) for the session.

Everything is trained here from scratch on CPU in seconds, so the suite is hermetic: nothing is
downloaded, nothing outside the pytest temp directory is written.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

import pytest
import torch

from ugen.runtime import run_main

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

# Small enough for seconds of CPU, large enough that every task has rows.
TINY_DATA = ["--num-train", "200", "--num-val", "40"]
# A script that runs longer than this has hung (the slowest here take about 2 minutes): fail the
# test instead of using up CI's time.
SCRIPT_TIMEOUT_S = 600


def run_script(script: str, *args: str, check: bool = True, processes: int = 1) -> subprocess.CompletedProcess:
    """Run a stage script by path, as a user would (`tokenizers/` must not be imported); with
    `processes` > 1 under torchrun, on this machine."""
    # Two threads, or the suite's own setting (`make test` runs two workers at one thread each).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    try:
        result = subprocess.run([*launcher, str(ROOT / script), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=SCRIPT_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        tail = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else err.stderr or ""
        raise AssertionError(f"{script} ran past {SCRIPT_TIMEOUT_S} s (hung?):\n{tail[-3000:]}") from None
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@functools.cache
def ugen_cli(*args: str) -> subprocess.CompletedProcess:
    """The `ugen` console command in a fresh process."""
    code = "from ugen.cli import entry; entry()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)


def _script(path: str) -> ModuleType:
    name = f"script_{Path(path).stem}"
    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_in_process(capsys, script: str | Callable[[list[str]], Any], *args: str) -> Result:
    """`run_script` (or the `ugen` command, given its `main`) without a new interpreter, which saves
    seconds of imports per call, for tests that run a stage many times to check its refusals: the
    same `main` and the same `run_main` around it."""
    main = _script(script).main if isinstance(script, str) else script
    capsys.readouterr()  # this call's output only
    try:
        run_main(lambda: main(list(args)))
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
    out, err = capsys.readouterr()
    return Result(code, out, err)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first (each keeps its place among them): `make test`'s two workers then share the
    minute-long ones from the start instead of one finishing its last while the other idles."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run directory with a briefly trained VQ tokenizer, text tokenizer and model."""
    run = tmp_path_factory.mktemp("run")
    run_script("tokenizers/train_vq.py", "--out", str(run / "vq"), "--steps", "20", "--batch-size", "16",
               *TINY_DATA, "--wandb", "disabled")
    run_script("tokenizers/train_text.py", "--out", str(run / "text"), *TINY_DATA)
    # the progressive schedule (not the default) exercises the most machinery: inactive ids, saved schedules
    run_script("train/pretrain.py", "--run-dir", str(run), "--steps", "6", "--batch-tokens", "512", "--warmup", "2",
               "--text-only-steps", "2", "--eval-every", "3", "--checkpoint-every", "3", *TINY_DATA,
               "--vocab-schedule", "progressive", "--wandb", "disabled")
    return run


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_run) -> Path:
    return tiny_run / "model"


@pytest.fixture(scope="session")
def tiny_unplanned_model_dir(tiny_run) -> Path:
    """A model pretrained without plans (--no-plan: it draws straight from the prompt) and with
    --row-ends (each row of image codes ends with <eol>) on tiny_run's tokenizers."""
    run = tiny_run / "unplanned"
    run_script("train/pretrain.py", "--run-dir", str(run), "--vq", str(tiny_run / "vq"),
               "--text-tokenizer", str(tiny_run / "text" / "text.model"), "--no-plan", "--row-ends", "--steps", "6", "--batch-tokens",
               "512", "--warmup", "2", "--text-only-steps", "2", "--eval-every", "3", *TINY_DATA, "--wandb", "disabled")
    return run / "model"


@contextlib.contextmanager
def live_server(app) -> Iterator[str]:
    """Serve a FastAPI app with uvicorn on a free local port in a thread; yields its base URL."""
    import uvicorn

    with socket.socket() as probe:  # a port nothing listens on now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise AssertionError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextlib.contextmanager
def opens_images(model, bias: float = 50.0) -> Iterator[None]:
    """Make the model prefer <boi> wherever it may open an image (+`bias` on its logit): the tiny
    test model, trained a few steps, seldom does on its own. Inside an image the engine allows image
    ids only; at +50 every sample is its prompt and then images until the length runs out, at a
    few units text and images alternate."""
    logit = torch.zeros(model.vocab.size)
    logit[model.vocab.boi] = bias
    handle = model.model.lm_head.register_forward_hook(lambda module, inputs, out: out + logit)
    try:
        yield
    finally:
        handle.remove()
