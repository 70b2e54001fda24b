"""Pieces the training stages share: data preparation, optimizer, LR schedule and checkpoints."""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from ugen.data import Source, open_split
from ugen.data.cache import CodeCache, load_cache
from ugen.errors import UserError
from ugen.runtime import atomic_dir, rng_state, set_rng_state, write_json
from ugen.text_tokenizer import Tokenizer


# -- data -------------------------------------------------------------------------------------
def split_codes(args: argparse.Namespace, split: str, vq, cache_dir: Path, text: Tokenizer, max_text: int,
                log: bool = True) -> tuple[Source, CodeCache]:
    """The rows of a split (the `add_data_args` flags) and their code cache, built on first use;
    skipped rows are reported when `log` (the main process)."""
    if args.image_size is None:
        args.image_size = vq.config.image_size
    elif args.image_size != vq.config.image_size:
        raise UserError(f"--image-size {args.image_size} differs from the VQ tokenizer's {vq.config.image_size}")
    source = open_split(args, split)
    return source, load_cache(source, vq, text, max_text, cache_dir, log=log)


# -- optimization -----------------------------------------------------------------------------
def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW with decay on matrices only (norms and biases are not decayed)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=torch.cuda.is_available())


def warmup_cosine(warmup: int, total: int, min_ratio: float):
    """LR multiplier: linear warmup, then cosine decay to `min_ratio` of the peak at `total`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


# -- metrics ----------------------------------------------------------------------------------
class MetricsLog:
    """`metrics.jsonl`: one JSON line per step, the record a resumed run is compared against.

    A run resumed from step N drops the lines past N, which belong to the killed run, so the file
    always reads as one uninterrupted run. A kill in the middle of a write leaves a torn last line:
    it is dropped (its step is redone); a bad line anywhere else means the file is not ours.
    """

    def __init__(self, path: Path, resumed_at: int):
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = [row for row in self._rows(path) if row["step"] <= resumed_at] if path.is_file() and resumed_at else []
        tmp = path.with_name(path.name + ".tmp")  # rewritten through a rename: a kill now loses no line
        tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
        tmp.replace(path)
        self.path, self.file = path, path.open("a")

    @staticmethod
    def _rows(path: Path) -> list[dict[str, Any]]:
        lines = path.read_text().splitlines()
        rows = []
        for number, line in enumerate(lines, 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if number < len(lines):
                    raise UserError(f"{path}: line {number} is not JSON; it is not a ugen metrics file") from None
                print(f"{path}: dropped a torn last line (a run killed while writing it)", file=sys.stderr)
        return rows

    def write(self, step: int, logs: dict[str, Any]) -> None:
        self.file.write(json.dumps({"step": step, **logs}) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


# -- checkpoints ------------------------------------------------------------------------------
CHECKPOINT = re.compile(r"^step-(\d+)$")


def save_checkpoint(
    directory: Path, step: int, model: torch.nn.Module, optimizer, scheduler, state: dict[str, Any], keep: int = 2
) -> Path:
    """Write `directory/step-N` atomically (weights as safetensors, the rest as JSON and torch
    pickles), then prune all but the newest `keep`."""
    final = Path(directory) / f"step-{step:07d}"
    with atomic_dir(final) as tmp:
        save_model(model, str(tmp / "model.safetensors"))  # writes tied embeddings (one tensor, two names) once
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()}, tmp / "trainer.pt")
        write_json(tmp / "state.json", {"step": step, **state})
    for old in sorted(checkpoints(directory))[:-keep]:
        shutil.rmtree(old[1], ignore_errors=True)
    return final


def checkpoints(directory: Path) -> list[tuple[int, Path]]:
    if not Path(directory).is_dir():
        return []
    found = [(int(m.group(1)), p) for p in Path(directory).iterdir() if (m := CHECKPOINT.match(p.name))]
    return sorted(found)


# Flags that steer one process of a run, not what it computes: they may change when it resumes.
PROCESS_FLAGS = frozenset({"resume", "overwrite", "max_minutes", "started_at", "wandb", "device", "run_dir",
                           "out", "eval_every", "checkpoint_every", "sample_every", "probe_every"})


def add_run_dir_args(group) -> None:
    """--resume and --overwrite, the two ways into a run directory that already holds checkpoints."""
    group.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of the run directory")
    group.add_argument("--overwrite", action="store_true",
                       help="delete the run directory's checkpoints and metrics and start over (without it, a new "
                            "run refuses a directory that holds checkpoints)")


def claim_run_dir(directory: Path, resume: bool, overwrite: bool, remove: bool = True) -> None:
    """Refuse to start a new run over an old run's checkpoints: a later --resume would continue the
    old run. With `overwrite`, the old checkpoints and metrics are deleted (by the process with
    `remove`, rank 0 under torchrun)."""
    if resume and overwrite:
        raise UserError("--resume continues the run in the directory and --overwrite deletes it: give one")
    found = checkpoints(directory)
    if not found or resume:
        return
    if not overwrite:
        raise UserError(f"{directory} holds checkpoints of an earlier run (newest: step {found[-1][0]}); "
                        "pass --resume to continue it or --overwrite to start over")
    if remove:
        shutil.rmtree(directory)
        (Path(directory).parent / "metrics.jsonl").unlink(missing_ok=True)


def config_differences(saved: dict[str, Any], current: dict[str, Any], may_change: frozenset[str] = frozenset()) -> list[str]:
    """`name saved -> current` for each run-defining setting that differs (PROCESS_FLAGS and
    `may_change` aside)."""
    current = json.loads(json.dumps(current))  # tuples and paths as the saved JSON has them
    keys = (set(saved) | set(current)) - PROCESS_FLAGS - may_change
    return [f"{key} {saved.get(key)!r} -> {current.get(key)!r}" for key in sorted(keys) if saved.get(key) != current.get(key)]


def resume(directory: Path, wanted: bool, model: torch.nn.Module, optimizer, scheduler, expected: dict[str, Any],
           log: bool = True, may_change: frozenset[str] = frozenset()) -> dict[str, Any] | None:
    """With `wanted` (--resume), restore the newest checkpoint in `directory` and return its
    state.json; None when not wanted or when there is none (a fresh start, said when `log`).

    `expected` is what this run would save in state.json (its resolved `config`, and for
    pretraining the vocabulary `schedule`): a checkpoint that differs in any of it belongs to
    another run, and resuming it would mix the two, so it is refused, naming the differences.
    Settings in `may_change` are the stage's to let differ (RL may be extended by --steps)."""
    if not wanted:
        return None
    found = checkpoints(directory)
    if not found:
        if log:
            print(f"--resume: no checkpoint in {directory}, starting fresh", file=sys.stderr)
        return None
    path = found[-1][1]
    state = read_state(path)
    differ = config_differences(state.get("config", {}), expected["config"], may_change)
    differ += [f"{key} (differs)" for key, value in expected.items()
               if key != "config" and state.get(key) != json.loads(json.dumps(value))]
    if differ:
        raise UserError(f"--resume: {path} was made with other settings than these flags: {'; '.join(differ)}")
    load_checkpoint(path, model, optimizer, scheduler)
    if log:
        print(f"resuming from {path} at step {state['step']}", file=sys.stderr)
    return state


def read_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"checkpoint {path} cannot be read: {err}") from None


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler) -> None:
    """Restore model, optimizer, LR schedule and RNGs in place."""
    try:
        trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)
        load_model(model, path / "model.safetensors", strict=True, device=str(next(model.parameters()).device))
    except (OSError, RuntimeError) as err:
        raise UserError(f"checkpoint {path} cannot be read: {err}") from None
    optimizer.load_state_dict(trainer["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    set_rng_state(trainer["rng"])
