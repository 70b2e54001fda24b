"""Training throughput and decoding speed of the presets on this machine.

    python benchmarks/speed.py                       # tiny, on the default device
    python benchmarks/speed.py --presets tiny small --device cuda

Training: tokens/s of full optimizer steps on random rows of the Shapes row length. Decoding:
greedy image generation (36 codes + <eoi>) through the engine with and without the KV cache.
Appends one JSON line per measurement to benchmarks/results.jsonl with the device named.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from ugen.model import PRESETS, build_model, masked_loss, num_params
from ugen.runtime import pick_device, run_main
from ugen.sampling import Engine, SamplingParams
from ugen.sequences import t2i_prompt
from ugen.training import make_optimizer
from ugen.vocab import Vocab

RESULTS = Path(__file__).with_name("results.jsonl")
VOCAB = Vocab(num_text=512, num_image=1000)  # the default Shapes run's vocabulary
GRID = 6


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_speed(preset: str, device: torch.device, batch: int, length: int, steps: int) -> dict:
    model = build_model(preset, VOCAB, 128, device)
    optimizer = make_optimizer(model, 1e-3, 0.1)
    ids = torch.randint(0, VOCAB.size, (batch, length), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    for step in range(steps + 2):
        if step == 2:  # the first steps pay for allocation and kernel selection
            sync(device)
            start = time.perf_counter()
        with autocast:
            logits = model(input_ids=ids).logits
        masked_loss(logits, ids, VOCAB, None).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    return {"params_M": round(num_params(model) / 1e6, 2), "batch": batch, "length": length,
            "s_per_step": round(seconds, 4), "tokens_per_s": round(batch * length / seconds)}


def decode_speed(preset: str, device: torch.device, rows: int) -> dict:
    model = build_model(preset, VOCAB, 128, device).eval()
    engine = Engine(model, VOCAB, GRID)
    prompts = [t2i_prompt(VOCAB, list(range(10)))] * rows
    out = {}
    for cached in (True, False):
        start = time.perf_counter()
        engine.generate(prompts, max_new_tokens=GRID * GRID + 1, params=SamplingParams(temperature=0),
                        stop_ids=(VOCAB.eoi,), cache="static" if cached else "none")
        sync(device)
        out["images_per_s_" + ("cached" if cached else "uncached")] = round(rows / (time.perf_counter() - start), 1)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", choices=list(PRESETS), default=["tiny"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--length", type=int, default=72, help="tokens per row (a Shapes row is ~40-80)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--decode-rows", type=int, default=32)
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    for preset in args.presets:
        result = {"preset": preset, "device": device_name(device), "torch": torch.__version__,
                  **train_speed(preset, device, args.batch_size, args.length, args.steps),
                  **decode_speed(preset, device, args.decode_rows)}
        print(json.dumps(result))
        with RESULTS.open("a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    run_main(main)
