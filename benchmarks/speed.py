"""Training throughput (packed against padded and against a bare step) and decoding speed.

    python benchmarks/speed.py                   # on a CPU: tiny; on a GPU: tiny, small and base
    python benchmarks/speed.py --presets small --max-len 2048 --batch-tokens 262144 --micro-batch 16

Training runs on the Shapes rows of the default run (its tokenizers and code cache, which `make vq
text-tokenizer` or `make pretrain` leave in runs/default), three ways, each on its own fresh model:
- padded: --rows rows a step, padded to the longest with an attention mask, the loss read every
  step (ugen's loop before packing);
- packed: train/pretrain.py's step: the batch of --batch-tokens packed on a worker thread ahead of
  the step, forward and backward over micro-batches, gradient clipping, optimizer and LR steps,
  the loss read every --log-every steps;
- bare: forward, backward (the packed step's own, whose output layer runs on the target positions
  only unless compiled) and optimizer step on one packed batch over and over, nothing else: the
  ceiling the packed loop is measured against.
The three take turns, --log-every steps each, until each has run --steps (after --warmup untimed
steps): this machine's speed drifts by 10-20% within minutes, and turns make the drift fall on
all three alike. Tokens are real tokens (padding left out); MFU on a GPU of known peak. The
defaults are pretraining's on a CPU; on a GPU, sequences of 1024 tokens, 128 of them a step in
micro-batches of 32, compiled (GPU_DEFAULTS; not yet run on a GPU). Decoding: greedy images
through the engine with and without the KV cache. One JSON line per preset is appended to
benchmarks/results.jsonl with the device named, and a Markdown table row is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ugen.data import add_data_args
from ugen.model import PRESETS, build_model, flops_per_token, masked_loss, num_params, plain_output_layer
from ugen.runtime import peak_flops, pick_device, run_main
from ugen.sampling import Engine, SamplingParams
from ugen.schedule import build_schedule
from ugen.sequences import RowSampler, apply_active_vocab, collate, t2i_prompt
from ugen.text_tokenizer import load_text_tokenizer
from ugen.training import Distributed, forward_backward, make_optimizer, split_codes, step_batch, warmup_cosine
from ugen.vocab import Vocab
from ugen.image_tokenizers import load_image_tokenizer

RESULTS = Path(__file__).with_name("results.jsonl")
GPU_DEFAULTS = {"presets": ["tiny", "small", "base"], "max_len": 1024, "batch_tokens": 131072, "micro_batch": 32,
                "compile": True}
MIX = {"text": 0.05, "text_qa": 0.1, "caption": 0.25, "vqa": 0.2, "t2i": 0.4}  # train/pretrain.py's default


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def report(result: dict, save: bool = True, indent: int | None = None) -> None:
    """Print a benchmark's result and, unless told not to, append it to results.jsonl."""
    print(json.dumps(result, indent=indent))
    if save:
        with RESULTS.open("a") as f:
            f.write(json.dumps(result) + "\n")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def shapes_rows(run: Path, device: torch.device):
    """(vocabulary, row sampler, image grid) of the run's cached Shapes codes."""
    parser = argparse.ArgumentParser()
    add_data_args(parser)
    data_args = parser.parse_args([])
    data_args.seed = 0  # the default run's, so its cached codes are found
    vq = load_image_tokenizer(run / "vq", device=device)
    text = load_text_tokenizer(run / "text" / "text.model")
    vocab = Vocab(num_text=text.size, num_image=vq.num_codes)
    _, rows = split_codes(data_args, "train", vq, run / "cache", text, max_text=84, log=False)
    return vocab, RowSampler(rows, vocab, MIX, caption_dropout=0.1), vq.grid


class Arm:
    """A fresh model and optimizer of a preset, and the time, real tokens and peak memory of the
    steps run on it. The arms of a comparison take turns (`run` a few steps each, round after
    round), so a machine whose speed drifts, as a shared VM's does, slows them alike."""

    def __init__(self, preset: str, vocab: Vocab, max_len: int, device: torch.device, seed: int = 0):
        torch.manual_seed(seed)
        self.model = build_model(preset, vocab, max_len, device)
        self.optimizer = make_optimizer(self.model, 1e-3, 0.1)
        self.device = device
        self.seconds, self.tokens, self.steps, self.peak = 0.0, 0, 0, 0

    def run(self, step, steps: int, timed: bool = True) -> None:
        """`steps` calls of `step` (which returns its real tokens); untimed for warm-up."""
        sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        began, tokens = time.perf_counter(), sum(step() for _ in range(steps))
        sync(self.device)
        if timed:
            self.seconds += time.perf_counter() - began
            self.tokens, self.steps = self.tokens + tokens, self.steps + steps
        memory = (torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda"
                  else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # on the CPU: the process's peak
        self.peak = max(self.peak, memory)

    def figures(self) -> dict:
        return {"tokens_per_s": round(self.tokens / self.seconds), "s_per_step": round(self.seconds / self.steps, 4),
                "peak_memory_mb": round(self.peak / 2**20)}


def train_speed(preset: str, device: torch.device, args, vocab: Vocab, sampler: RowSampler) -> dict:
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    schedule = build_schedule("vanilla", vocab.num_image, 10**6, text_only_steps=0, full_at=0.0)
    all_active = schedule.active_codes(10**5)
    sequences = args.batch_tokens // args.max_len
    micro = args.micro_batch or sequences
    dist = Distributed(device)
    arms = {name: Arm(preset, vocab, args.max_len, device) for name in ("padded", "packed", "bare")}

    # padded: collate + attention mask, the mean loss read at every step
    padded, drawn = arms["padded"], iter(range(10**9))

    def padded_step() -> int:
        rows = sampler.rows(np.random.default_rng([0, next(drawn)]), args.rows)
        batch = {k: v.to(device) for k, v in apply_active_vocab(collate(rows, vocab.pad, args.max_len), vocab, all_active).items()}
        with autocast():
            logits = padded.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        loss = masked_loss(logits, batch["labels"], vocab, all_active)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(padded.model.parameters(), 1.0)
        padded.optimizer.step()
        padded.optimizer.zero_grad(set_to_none=True)
        loss.item()
        return int(batch["attention_mask"].sum())

    # packed: the pretraining loop's step, batches prepared ahead on a thread
    packed = arms["packed"]
    packed_model = torch.compile(packed.model) if args.compile else packed.model
    head_on_targets = not args.compile and plain_output_layer(packed.model)  # as train/pretrain.py decides
    scheduler = torch.optim.lr_scheduler.LambdaLR(packed.optimizer, warmup_cosine(10, 10**6, 0.1))
    window, steps = torch.zeros((), device=device), iter(range(10**9))

    def prepare(step: int) -> dict:
        batch = step_batch(sampler, vocab, schedule, 0, step, sequences, args.max_len)
        if device.type == "cuda":
            batch |= {k: batch[k].pin_memory() for k in ("input_ids", "labels", "position_ids")}
        return batch

    pool = ThreadPoolExecutor(max_workers=1)
    ahead = [pool.submit(prepare, 0)]

    def packed_step() -> int:
        step = next(steps)
        batch = ahead[0].result()
        ahead[0] = pool.submit(prepare, step + 1)
        window.add_(forward_backward(packed_model, packed.model, batch, micro, vocab, dist, autocast, head_on_targets))
        torch.nn.utils.clip_grad_norm_(packed.model.parameters(), 1.0)
        packed.optimizer.step()
        scheduler.step()
        packed.optimizer.zero_grad(set_to_none=True)
        if (step + 1) % args.log_every == 0:
            window.item()
            window.zero_()
        return batch["tokens"]

    # bare: the same model on one packed batch, forward, backward and optimizer step only
    bare, fixed = arms["bare"], prepare(10**6)
    bare_model = torch.compile(bare.model) if args.compile else bare.model
    fixed = {**fixed, **{k: fixed[k].to(device) for k in ("input_ids", "labels", "position_ids")}}

    def bare_step() -> int:  # the same forward and loss as the packed step (its output layer on targets only)
        forward_backward(bare_model, bare.model, fixed, micro, vocab, dist, autocast, head_on_targets)
        bare.optimizer.step()
        bare.optimizer.zero_grad(set_to_none=True)
        return fixed["tokens"]

    step_of = {"padded": padded_step, "packed": packed_step, "bare": bare_step}
    for name, arm in arms.items():  # allocation, kernel choice, compilation
        arm.run(step_of[name], args.warmup, timed=False)
    turn = max(1, min(args.log_every, args.steps))
    for _ in range(0, args.steps, turn):
        for name, arm in arms.items():
            arm.run(step_of[name], turn)
    pool.shutdown()

    out = {name: arm.figures() for name, arm in arms.items()}
    result = {"params_M": round(num_params(bare.model) / 1e6, 2), "max_len": args.max_len,
              "batch_tokens": sequences * args.max_len, "padded_rows": args.rows, "micro_batch": micro,
              "compile": args.compile, **{f"{k}_{m}": v[m] for k, v in out.items() for m in v},
              "packed_vs_padded": round(out["packed"]["tokens_per_s"] / out["padded"]["tokens_per_s"], 2),
              "packed_vs_bare": round(out["packed"]["tokens_per_s"] / out["bare"]["tokens_per_s"], 3)}
    peak = peak_flops(device)
    if peak:
        flops = flops_per_token(bare.model, args.max_len)
        result |= {f"mfu_{k}": round(flops * v["tokens_per_s"] / peak, 3) for k, v in out.items()}
    return result


def decode_speed(preset: str, device: torch.device, vocab: Vocab, grid: int, rows: int) -> dict:
    model = build_model(preset, vocab, 128, device).eval()
    engine = Engine(model, vocab, grid)
    prompts = [t2i_prompt(vocab, list(range(10)))] * rows
    out = {}
    for cache in ("static", "none"):
        engine.generate(prompts[:2], max_new_tokens=grid * grid + 1, params=SamplingParams(temperature=0),
                        stop_ids=(vocab.eoi,), cache=cache)  # warm-up
        sync(device)
        began = time.perf_counter()
        engine.generate(prompts, max_new_tokens=grid * grid + 1, params=SamplingParams(temperature=0),
                        stop_ids=(vocab.eoi,), cache=cache)
        sync(device)
        out[f"images_per_s_{'cached' if cache == 'static' else 'uncached'}"] = round(rows / (time.perf_counter() - began), 1)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", choices=list(PRESETS), default=["tiny"], help="default on a GPU: tiny small base")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--run", default="runs/default", help="run directory with the Shapes tokenizers")
    parser.add_argument("--max-len", type=int, default=128, help="packed sequence length (pretraining's --max-len)")
    parser.add_argument("--batch-tokens", type=int, default=2816, help="tokens per packed step (pretraining's default)")
    parser.add_argument("--micro-batch", type=int, default=None, help="sequences per forward (default: all)")
    parser.add_argument("--rows", type=int, default=48, help="rows per padded step (pretraining's old --batch-size)")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per arm, in turns of --log-every")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="torch.compile the packed and bare arms")
    parser.add_argument("--decode-rows", type=int, default=32)
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    if device.type == "cuda":  # a GPU's defaults: what was not given on the command line
        given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in (argv if argv is not None else sys.argv[1:])
                 if a.startswith("--")}
        for name, value in GPU_DEFAULTS.items():
            if name not in given:
                setattr(args, name, value)
    vocab, sampler, grid = shapes_rows(Path(args.run), device)
    for preset in args.presets:
        result = {"benchmark": "train_speed", "preset": preset, "device": device_name(device), "torch": torch.__version__,
                  **train_speed(preset, device, args, vocab, sampler), **decode_speed(preset, device, vocab, grid, args.decode_rows),
                  "date": time.strftime("%Y-%m-%d"), "command": " ".join(["python benchmarks/speed.py", *(argv if argv is not None else sys.argv[1:])])}
        report(result)
        print(f"| {preset} | {result['device']} | {result['padded_tokens_per_s']:,} | {result['packed_tokens_per_s']:,} | "
              f"{result['bare_tokens_per_s']:,} | {result['packed_vs_padded']}x | {100 * result['packed_vs_bare']:.0f}% | "
              f"{result.get('mfu_packed', '-')} | {result['packed_peak_memory_mb']:,} MB |")


if __name__ == "__main__":
    run_main(main)
