"""Pieces the training stages share: data preparation, optimizer, LR schedule and checkpoints."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from ugen.data import Example, load_split
from ugen.errors import UserError
from ugen.runtime import atomic_dir, rng_state, set_rng_state, write_json
from ugen.sequences import TokenizedExample
from ugen.text_tokenizer import Tokenizer


# -- data -------------------------------------------------------------------------------------
def cached_codes(tokenizer, examples: list[Example], cache_dir: Path, key: str) -> np.ndarray:
    """VQ codes of every example, (N, grid*grid), encoded once and cached under `cache_dir`.

    `key` names the data (source, split, size, seed); the tokenizer's weights are hashed in, so a
    retrained tokenizer never reuses stale codes.
    """
    from ugen.vq import encode_images

    digest = hashlib.sha1(key.encode())
    for name, tensor in sorted(tokenizer.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    path = Path(cache_dir) / f"codes-{digest.hexdigest()[:16]}.npy"
    if path.is_file():
        codes = np.load(path)
        if len(codes) == len(examples):
            return codes
    codes = encode_images(tokenizer, np.stack([e.image for e in examples]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")  # torchrun ranks may encode at once
    np.save(tmp, codes)
    tmp.replace(path)
    return codes


def split_codes(args: argparse.Namespace, split: str, tokenizer, cache_dir: Path, log: bool = True) -> tuple[list[Example], np.ndarray]:
    """The examples of a split (the `add_data_args` flags) and their cached VQ codes; skipped
    unreadable rows are reported when `log` (the main process)."""
    if args.image_size != tokenizer.config.image_size:
        raise UserError(f"--image-size {args.image_size} differs from the VQ tokenizer's {tokenizer.config.image_size}")
    examples, skipped = load_split(args, split)
    if not examples:
        raise UserError(f"{args.data}: the {split} split has no readable examples")
    if skipped and log:
        print(f"{split}: skipped {skipped} unreadable rows of {len(examples) + skipped}", file=sys.stderr)
    key = f"{args.data}|{split}|{args.num_train if split == 'train' else args.num_val}|{args.image_size}|{args.seed}"
    return examples, cached_codes(tokenizer, examples, cache_dir, key)


def tokenize_examples(examples: list[Example], codes: np.ndarray, text: Tokenizer, max_text: int) -> list[TokenizedExample]:
    """Text-tokenizer ids for every text of every example; texts are clipped to `max_text` pieces so
    that a long caption never pushes the image codes out of a row."""

    def enc(s: str) -> list[int]:
        return text.encode(s)[:max_text]

    return [
        TokenizedExample(
            codes=c,
            caption=enc(e.caption),
            prompts=[enc(p) for p in e.prompts],
            qa=[(enc(q), enc(a)) for q, a, _ in e.qa],
            passage=text.encode(e.passage or e.caption)[: 2 * max_text],
        )
        for e, c in zip(examples, codes)
    ]


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
    always reads as one uninterrupted run.
    """

    def __init__(self, path: Path, resumed_at: int):
        path.parent.mkdir(parents=True, exist_ok=True)
        old = path.read_text().splitlines() if path.is_file() and resumed_at else []
        path.write_text("".join(line + "\n" for line in old if json.loads(line)["step"] <= resumed_at))
        self.path, self.file = path, path.open("a")

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


def resume(directory: Path, wanted: bool, model: torch.nn.Module, optimizer, scheduler, log: bool = True) -> dict[str, Any] | None:
    """With `wanted` (--resume), restore the newest checkpoint in `directory` and return its
    state.json; None when not wanted or when there is none (a fresh start, said when `log`)."""
    if not wanted:
        return None
    found = checkpoints(directory)
    if not found:
        if log:
            print(f"--resume: no checkpoint in {directory}, starting fresh", file=sys.stderr)
        return None
    state = load_checkpoint(found[-1][1], model, optimizer, scheduler)
    if log:
        print(f"resuming from {found[-1][1]} at step {state['step']}", file=sys.stderr)
    return state


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler) -> dict[str, Any]:
    """Restore model, optimizer, LR schedule and RNGs in place; returns state.json."""
    try:
        state = json.loads((path / "state.json").read_text())
        trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)
        load_model(model, path / "model.safetensors", strict=True, device=str(next(model.parameters()).device))
    except (OSError, json.JSONDecodeError, RuntimeError) as err:
        raise UserError(f"checkpoint {path} cannot be read: {err}") from None
    optimizer.load_state_dict(trainer["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    set_rng_state(trainer["rng"])
    return state
