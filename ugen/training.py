"""Pieces the training stages share: data preparation, processes, the packed step, optimizer, LR
schedule, throughput and checkpoints."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from transformers import AutoModelForCausalLM, PreTrainedModel

from ugen.data import Source, open_split
from ugen.data.cache import CodeCache, load_cache
from ugen.errors import UserError, one_line
from ugen.model import masked_loss
from ugen.runtime import atomic_dir, replace_dir, rng_state, set_rng_state, write_json
from ugen.schedule import VocabSchedule
from ugen.sequences import IGNORE, TEXT_TASKS, RowSampler, apply_active_vocab, pack
from ugen.text_tokenizer import Tokenizer
from ugen.vocab import Vocab


# -- data -------------------------------------------------------------------------------------
def split_codes(args: argparse.Namespace, split: str, vq, cache_dir: Path, text: Tokenizer, max_text: int,
                log: bool = True) -> tuple[Source, CodeCache]:
    """The rows of a split (the `add_data_args` flags) and their code cache, built on first use;
    skipped rows are reported when `log` (the main process)."""
    if args.image_size is None:
        args.image_size = vq.image_size
    elif args.image_size != vq.image_size:
        raise UserError(f"--image-size {args.image_size} differs from the image tokenizer's {vq.image_size}")
    source = open_split(args, split)
    return source, load_cache(source, vq, text, max_text, cache_dir, log=log)


# -- processes and steps ----------------------------------------------------------------------
class Distributed:
    """torchrun gives RANK/WORLD_SIZE; one process is the same code path with world size 1."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.fsdp = False  # set by wrap
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = device
        if self.world > 1:
            if device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(self.device)
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module, fsdp: bool = False) -> torch.nn.Module:
        """The model as the processes train it: DDP (a full copy each), or with `fsdp` FSDP2
        (parameters, gradients and optimizer state sharded, one unit per transformer block, bf16
        compute with fp32 gradient reduction on CUDA), which shards `model` in place: build the
        optimizer after. One process trains the model as it is."""
        self.fsdp = fsdp
        if self.world == 1:
            return model
        if not fsdp:
            return torch.nn.parallel.DistributedDataParallel(model, device_ids=[self.device] if self.device.type == "cuda" else None)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(self.device.type, (self.world,))
        precision = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
                     if self.device.type == "cuda" else MixedPrecisionPolicy())
        blocks = [m for m in model.modules() if type(m).__name__ in (model._no_split_modules or ())]
        if not blocks:
            raise UserError(f"--fsdp: {type(model).__name__} names no transformer block class to shard by")
        for block in blocks:
            fully_shard(block, mesh=mesh, mp_policy=precision)
        fully_shard(model, mesh=mesh, mp_policy=precision)
        return model

    def any(self, flag: bool) -> bool:
        """True on every process when it is true on one (so that all stop at the same step)."""
        if self.world == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item())

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum over processes (in place)."""
        if self.world > 1:
            torch.distributed.all_reduce(tensor)
        return tensor

    def gradient_sync(self, model: torch.nn.Module, sync: bool):
        """DDP all-reduces gradients in every backward; between the micro-batches of one step
        that is wasted, so only the last backward syncs."""
        if sync or self.world == 1:
            return contextlib.nullcontext()
        if self.fsdp:  # FSDP2 keeps unreduced gradients until the last backward asks for the sync
            model.set_requires_gradient_sync(False)
            return _FinallySync(model)
        return model.no_sync()

    def full_model(self, model: PreTrainedModel) -> PreTrainedModel | None:
        """The whole model on the main process (None on the others): `model` itself, or under FSDP
        its shards gathered into a plain copy on the CPU (a collective: every process calls it)."""
        if not (self.fsdp and self.world > 1):
            return model if self.main else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.main:
            return None
        with torch.device("meta"):
            plain = AutoModelForCausalLM.from_config(model.config)
        plain.load_state_dict(weights, assign=True, strict=False)  # a tied output layer is the input's
        plain.tie_weights()
        return plain

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.world > 1:
            torch.distributed.destroy_process_group()


def step_batch(sampler: RowSampler, vocab: Vocab, schedule: VocabSchedule, seed: int, step: int, sequences: int,
               length: int) -> dict:
    """The whole batch of a step, every process's share: `sequences` packed sequences with the
    step's inactive image ids hidden, its `active` mask, its count of `targets` (the loss is their
    mean) and of real `tokens` (the tails' padding left out). A function of (seed, step) alone, so
    a resumed run and a run on any number of processes see the same rows."""
    rng = np.random.default_rng([seed, step])
    tasks = TEXT_TASKS if schedule.phase(step) == 0 else None
    bins = sampler.fill(rng, sequences, length, tasks)
    active = schedule.active_codes(step)
    batch = apply_active_vocab(pack(bins, length, vocab.pad), vocab, active)
    return {**batch, "active": active, "targets": int((batch["labels"] != IGNORE).sum()),
            "tokens": sum(len(row.ids) for rows in bins for row in rows)}


def attention_implementation_of(model) -> str:
    """The attention kernel a (possibly compiled, possibly DDP-wrapped) transformers model runs."""
    inner = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    inner = getattr(inner, "module", inner)  # DDP's
    return getattr(getattr(inner, "config", None), "_attn_implementation", None) or ""


def forward_backward(train_model, wrapped, batch: dict, micro: int, vocab: Vocab, dist: Distributed,
                     autocast, head_on_targets: bool = False) -> torch.Tensor:
    """Gradients of one step, accumulated over micro-batches of `micro` sequences of this process's
    share of `batch` (from `step_batch`); returns the share's part of the step's mean loss, on the
    device. `wrapped` is what `Distributed.wrap` returned (DDP, FSDP or the model itself), which
    `train_model` may be a compiled form of.

    `head_on_targets` (`train_model` a plain model with a `plain_output_layer`) runs the output
    layer and the softmax on the positions with a target only: about 30% of a packed Shapes batch,
    which makes a tiny model's step 10% faster on a CPU. Under DDP or FSDP the step goes through
    the wrapper's forward, and a compiled step wants fixed shapes, so they score every position."""
    inputs = {k: batch[k].to(dist.device, non_blocking=True) for k in ("input_ids", "labels", "position_ids")}
    # flash-attn reads restarting position_ids as row boundaries only in a batch of one sequence
    # (transformers' varlen path checks the batch size): with several, the packed rows of each
    # sequence would attend to one another. Under flash-attn a micro-batch goes in as one long
    # sequence; SDPA builds its block-diagonal mask from the restarts for any batch.
    one_row = attention_implementation_of(train_model).startswith("flash")
    # DDP averages gradients over processes: scaled so, the step's gradient is that of the mean
    # loss over every target of the whole batch, however it is split.
    targets = max(batch["targets"], 1)
    # No mask once every image id is active; before that, the mask sent to the device once a step.
    active = None if bool(batch["active"].all()) else batch["active"].to(dist.device, non_blocking=True)
    total = torch.zeros((), device=dist.device)
    rows = len(inputs["input_ids"])
    for i in range(0, rows, micro):
        part = {k: v[i : i + micro].reshape(1, -1) if one_row else v[i : i + micro] for k, v in inputs.items()}
        with dist.gradient_sync(wrapped, sync=i + micro >= rows):
            with autocast():
                if head_on_targets:
                    hidden = train_model.get_decoder()(input_ids=part["input_ids"], position_ids=part["position_ids"],
                                                       use_cache=False).last_hidden_state  # (B, T, D)
                    scored = part["labels"] != IGNORE  # (B, T)
                    logits = train_model.get_output_embeddings()(hidden[scored])  # (N, V)
                    labels = part["labels"][scored]
                else:
                    logits = train_model(input_ids=part["input_ids"], position_ids=part["position_ids"], use_cache=False).logits
                    labels = part["labels"]
            loss = masked_loss(logits, labels, vocab, active, reduction="sum")
            (loss * (dist.world / targets)).backward()
        total += loss.detach() / targets
    return total


class _FinallySync(contextlib.AbstractContextManager):
    """Turns FSDP2's gradient reduction back on once a micro-batch's backward is done."""

    def __init__(self, model):
        self.model = model

    def __exit__(self, *exc):
        self.model.set_requires_gradient_sync(True)


class Throughput:
    """Tokens/s and MFU of the training steps alone: a window runs from the end of one log line
    (and whatever validation or checkpoint followed it) to the next, and the first window, which
    pays for compilation and allocation, is left out of the run's total once there is another."""

    def __init__(self, world: int, flops_per_token: float, peak: float | None):
        self.world, self.flops_per_token, self.peak = world, flops_per_token, peak
        self.windows, self.tokens, self.seconds = 0, 0, 0.0
        self.restart()

    def restart(self) -> None:
        self.began, self.window_tokens = time.perf_counter(), 0

    def add(self, tokens: int) -> None:
        self.window_tokens += tokens

    def close_window(self) -> dict[str, float]:
        """The window's figures; call after something waited for the device (a loss read)."""
        seconds = time.perf_counter() - self.began
        self.windows += 1
        if self.windows == 2:
            self.tokens, self.seconds = 0, 0.0
        self.tokens += self.window_tokens
        self.seconds += seconds
        return self._figures(self.window_tokens, seconds)

    def total(self) -> dict[str, float]:
        return self._figures(self.tokens, self.seconds)

    def _figures(self, tokens: int, seconds: float) -> dict[str, float]:
        per_device = tokens / max(seconds, 1e-9) / self.world
        figures = {"tokens_per_s": per_device * self.world, "tokens_per_s_per_device": per_device}
        if self.peak:
            figures["mfu"] = self.flops_per_token * per_device / self.peak
        return figures


# -- optimization -----------------------------------------------------------------------------
OPTIMIZERS = ("adamw", "muon")
LR_SCHEDULES = ("cosine", "wsd")


def _param_groups(model: torch.nn.Module) -> tuple[list, list]:
    """(hidden matrices, the rest), each in the model's parameter order (a checkpoint's optimizer
    state is matched to parameters by that order). The rest are norms, biases, the input embedding
    and the output layer (one tied parameter, maybe: compared by identity, as tensor == compares
    values): an image id that progressive vocabulary learning has not switched on yet gets no
    gradient in its rows, and decay alone would shrink them every step toward zero before the id
    is ever trained; nor is an embedding a linear map for Muon."""
    vocab_ids = {id(m.weight) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
    params = [p for p in model.parameters() if p.requires_grad]
    hidden = [p for p in params if p.dim() >= 2 and id(p) not in vocab_ids]
    rest = [p for p in params if p.dim() < 2 or id(p) in vocab_ids]
    return hidden, rest


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95), kind: str = "adamw",
                   muon_lr: float = 0.02) -> torch.optim.Optimizer:
    """AdamW with decay on the hidden matrices only (norms, biases, the input embedding and the
    output layer are not decayed: see `_param_groups`), or with `kind="muon"` Muon on the hidden
    matrices (at `muon_lr`, Keller Jordan's scale: the orthogonalised update times
    sqrt(max(1, rows / cols))) and AdamW at `lr` on the rest, as modded-nanogpt trains."""
    if kind not in OPTIMIZERS:
        raise UserError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {kind!r}")
    hidden, rest = _param_groups(model)
    fused = torch.cuda.is_available()
    if kind == "adamw":
        groups = [{"params": hidden, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)
    return MuonAdamW(torch.optim.Muon(hidden, lr=muon_lr, weight_decay=weight_decay, adjust_lr_fn="original"),
                     torch.optim.AdamW(rest, lr=lr, betas=betas, weight_decay=0.0, fused=fused))


class MuonAdamW(torch.optim.Optimizer):
    """Muon and AdamW stepped as one optimizer, so that an LR scheduler, gradient clipping and the
    checkpoints see one object. Its `param_groups` are the two optimizers' own group dicts (not
    copies), so a scheduler that sets a group's "lr" sets it in the optimizer that steps it; each
    group's LR is scaled from its own initial value, Muon's and AdamW's peaks kept apart.

    torch ships Muon (2.9+) but for 2-D parameters alone, and no combined form: hence this class."""

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW):
        self.muon, self.adamw = muon, adamw
        # Optimizer.__init__ appends each group dict as it is (filling no defaults: there are none),
        # so the groups stay shared with the inner optimizers.
        super().__init__(muon.param_groups + adamw.param_groups, defaults={})

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("MuonAdamW.step takes no closure")
        self.muon.step()
        self.adamw.step()

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if set(state_dict) != {"muon", "adamw"}:
            raise UserError("the checkpoint's optimizer state is not Muon with AdamW: resume with the run's own --optimizer")
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        # load_state_dict replaces each inner optimizer's group dicts: share them again
        self.param_groups = self.muon.param_groups + self.adamw.param_groups


def lr_schedule(kind: str, warmup: int, total: int, min_ratio: float, decay_share: float = 0.3):
    """The LR multiplier of a step: `cosine` (`warmup_cosine`) or `wsd` (`warmup_stable_decay`)."""
    if kind not in LR_SCHEDULES:
        raise UserError(f"LR schedule must be one of {', '.join(LR_SCHEDULES)}, not {kind!r}")
    if kind == "wsd":
        return warmup_stable_decay(warmup, total, min_ratio, decay_share)
    return warmup_cosine(warmup, total, min_ratio)


def warmup_cosine(warmup: int, total: int, min_ratio: float):
    """LR multiplier: linear warmup, then cosine decay to `min_ratio` of the peak at `total`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def warmup_stable_decay(warmup: int, total: int, min_ratio: float, decay_share: float):
    """LR multiplier: linear warmup, the peak held, then a linear decay over the last
    `decay_share` of the steps to `min_ratio` at `total` (modded-nanogpt's schedule: the peak is
    held longer than a cosine holds it, and the decay at the end does the annealing)."""
    if not 0.0 < decay_share <= 1.0:
        raise UserError(f"the decay's share of the steps must be in (0, 1], not {decay_share}")
    decay_start = total - max(1, round(decay_share * total))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1, total - decay_start))
        return 1.0 - (1.0 - min_ratio) * progress

    return factor


def autocast_context(device: torch.device, precision: str):
    """A context factory for the forward passes: bf16 autocast over fp32 weights, or none.
    `auto` is bf16 on CUDA and on a CPU with bf16 instructions (AVX512-BF16 or AMX: on this
    project's 2-core Zen 4 a tiny step ran 1.23x faster, validation losses as low), fp32 on other
    CPUs, where bf16 matmuls are emulated and slower than fp32."""
    if precision not in ("auto", "bf16", "fp32"):
        raise UserError(f"precision must be auto, bf16 or fp32, not {precision!r}")
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()) else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (Linux's flags avx512_bf16 or amx_bf16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: assume not
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# -- metrics ----------------------------------------------------------------------------------
class MetricsLog:
    """`metrics.jsonl`: one JSON line per logged step, the record a resumed run is compared against.

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
    _prune(directory, keep)
    return final


def _prune(directory: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints."""
    for _, path in checkpoints(directory)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def save_run_checkpoint(directory: Path, step: int, model: torch.nn.Module, optimizer, scheduler,
                        state: dict[str, Any], dist: Distributed) -> None:
    """A training run's checkpoint as its processes hold the model: sharded under --fsdp (every
    process writes), else one file of the whole model written by the main process."""
    if dist.fsdp:
        save_sharded_checkpoint(directory, step, model, optimizer, scheduler, state, dist)
    elif dist.main:
        save_checkpoint(directory, step, model, optimizer, scheduler, state)


def save_sharded_checkpoint(directory: Path, step: int, model: torch.nn.Module, optimizer, scheduler,
                            state: dict[str, Any], dist: Distributed, keep: int = 2) -> Path:
    """--fsdp's checkpoint, written by every process: the weights and optimizer state as
    torch.distributed.checkpoint shards in `dcp/`, which a run on any number of processes loads
    (it reshards on reading), the LR schedule, RNGs and state.json by the main process; renamed
    into place once all is written, then all but the newest `keep` pruned."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = Path(directory) / f"step-{step:07d}"
    tmp = final.parent / f".tmp-{final.name}"  # one name for every process (atomic_dir's is per process)
    if dist.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    weights, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": weights, "optimizer": optimizer_state}, checkpoint_id=tmp / "dcp")
    if dist.main:
        torch.save({"scheduler": scheduler.state_dict(), "rng": rng_state()}, tmp / "trainer.pt")
        write_json(tmp / "state.json", {"step": step, **state})
        replace_dir(tmp, final)
        _prune(directory, keep)
    dist.barrier()
    return final


def checkpoints(directory: Path) -> list[tuple[int, Path]]:
    if not Path(directory).is_dir():
        return []
    found = [(int(m.group(1)), p) for p in Path(directory).iterdir() if (m := CHECKPOINT.match(p.name))]
    return sorted(found)


# Flags that steer one process of a run, not what it computes: they may change when it resumes
# (--micro-batch splits the same step into more passes).
PROCESS_FLAGS = frozenset({"resume", "overwrite", "max_minutes", "started_at", "wandb", "device", "run_dir",
                           "out", "eval_every", "checkpoint_every", "sample_every", "probe_every", "log_every",
                           "micro_batch", "compile"})


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
        raise UserError(f"--resume: {path} was made with other settings than these flags: {'; '.join(differ)} "
                        "(give the flags it was made with, or --overwrite to start over)")
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
    """Restore model, optimizer, LR schedule and RNGs in place, from either kind of checkpoint."""
    if (path / "dcp").is_dir():
        return _load_sharded_checkpoint(path, model, optimizer, scheduler)
    if any(type(p).__name__ == "DTensor" for p in model.parameters()):  # an FSDP model
        raise UserError(f"checkpoint {path} was written without --fsdp: resume it without --fsdp")
    try:
        trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)
        load_model(model, path / "model.safetensors", strict=True, device=str(next(model.parameters()).device))
    except (OSError, RuntimeError) as err:
        raise UserError(f"checkpoint {path} cannot be read: {err}") from None
    try:
        optimizer.load_state_dict(trainer["optimizer"])
    except ValueError as err:  # e.g. a checkpoint from before the optimizer's parameter groups changed
        raise UserError(f"checkpoint {path} holds an optimizer of another layout ({one_line(err)}): "
                        "start the run anew or resume with the ugen version that wrote it") from None
    scheduler.load_state_dict(trainer["scheduler"])
    set_rng_state(trainer["rng"])


def _load_sharded_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler) -> None:
    """A `save_sharded_checkpoint` into this run's model, sharded over any number of processes
    (or none): every process reads the pieces of its own shards."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    weights, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": weights, "optimizer": optimizer_state}
    try:
        dcp.load(state, checkpoint_id=path / "dcp")
        trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, ValueError) as err:
        raise UserError(f"checkpoint {path} cannot be read: {one_line(err)}") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    set_rng_state(trainer["rng"])
