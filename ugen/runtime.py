"""What every stage script shares: seeding, devices, wandb, atomic writes and the error guard."""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ugen.errors import UserError


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Flags every stage script takes, so they read the same everywhere."""
    group = parser.add_argument_group("run")
    group.add_argument("--seed", type=int, default=0, help="seed for data order, init and sampling")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    group.add_argument("--wandb", choices=["online", "offline", "disabled"], default="offline",
                       help="wandb mode (offline by default: logs stay in the run directory)")
    group.add_argument("--max-minutes", type=float, default=None,
                       help="stop cleanly (checkpoint and final save) after this much wall time")
    group.add_argument("--started-at", type=float, default=None,
                       help="Unix time --max-minutes counts from (default: this script's start); `make "
                            "pretrain` passes its own, so that its budget covers the tokenizers too")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    """The device a script runs on; on CUDA, fp32 matmuls (whatever autocast leaves in fp32) use TF32."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but no CUDA device is available")
    if name.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch.device(name)


# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, by a piece of the name
# torch.cuda.get_device_name gives; the more specific names first (an "H100 PCIe" is not an SXM part).
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12),
    ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12),
)


def peak_flops(device: torch.device) -> float | None:
    """The device's peak bf16 FLOP/s for MFU; None on a CPU or a GPU not in the table (then no MFU
    is shown: a guessed peak would make a wrong figure look right)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in name), None)


def rng_state() -> dict[str, Any]:
    """Every RNG a run draws from, so that a resumed run continues exactly. On CUDA, the generator
    of this process's own device only: a run may resume on another number of GPUs, and the data
    order never depends on it (it comes from the seed and the step)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    saved = state.get("cuda")
    if saved is not None and torch.cuda.is_available():
        if isinstance(saved, (list, tuple)):  # written by an older ugen: one state per device it saw
            if not saved:
                return
            saved = saved[min(torch.cuda.current_device(), len(saved) - 1)]
        torch.cuda.set_rng_state(saved)  # onto this process's device, whatever the saving run had


@contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that is renamed to `final` only once everything is written.

    A run killed half-way leaves a `.tmp-*` directory behind, never a half-written `final`.
    An existing `final` is replaced only after the new one is complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, final)


def replace_dir(tmp: Path, final: Path) -> None:
    """Rename the complete directory `tmp` to `final`; an existing `final` is moved aside first and
    deleted only after, so some complete version is always in place."""
    old = final.parent / f".old-{final.name}-{os.getpid()}"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half of it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def init_wandb(mode: str, run_dir: str | os.PathLike, project: str, config: dict[str, Any]):
    """Start a wandb run that keeps its files in the run directory (offline unless asked).

    A WANDB_MODE set in the environment wins over `mode` (wandb's own rule is the reverse): CI and
    the tests disable wandb that way for every stage at once."""
    import wandb

    return wandb.init(project=project, dir=str(run_dir), mode=os.environ.get("WANDB_MODE") or mode, config=config, reinit="finish_previous")


class Deadline:
    """The `--max-minutes` guard: a loop asks `expired()` and stops cleanly. Wall-clock time, not
    monotonic, because `started_at` may be another process's start."""

    def __init__(self, minutes: float | None, started_at: float | None = None):
        start = time.time() if started_at is None else started_at
        self.end = None if minutes is None else start + 60 * minutes

    def expired(self) -> bool:
        return self.end is not None and time.time() > self.end


def run_main(main: Callable[[], Any]) -> None:
    """Run a script's main: bad input is one line on stderr and exit code 2, never a traceback."""
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def run_logged(cmd: list[str], log: Path, threads: int, cwd: Path | None = None) -> None:
    """Run a stage script (`cmd[0]`, by path) with this Python, its output appended to `log` and
    `threads` CPU threads; a failure names the log to read. For drivers that run many trainings
    (eval/ablation.py, eval/experiment.py)."""
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        done = subprocess.run([sys.executable, *cmd], cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        raise UserError(f"{cmd[0]} failed (exit {done.returncode}); see {log}")
