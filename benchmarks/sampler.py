"""Sampling speed: ugen's engine against `transformers` `generate` on the same weights and work.

    python benchmarks/sampler.py --model runs/default/model          # after `make pretrain`
    python benchmarks/sampler.py --preset tiny                       # random weights, the same work
    python benchmarks/sampler.py --preset base --grid 24 --codes 16384 --prompts 8 --device cuda

The work: text-to-image for 16 prompts, one image each, CFG 1.5, temperature 0.7, on 2 CPU
threads (or the GPU with --device cuda). With --preset instead of --model, the weights are random
(image drawing is the same work whatever they are: a fixed number of codes), the vocabulary
Shapes' text ids and --codes image codes, the grid --grid: the last line above is issue 11's GPU
goal (8 images of 24x24 codes with CFG from base, against LlamaGen's GPT-B). The ways to draw it:
- the engine (`UGen.draw_codes`): conditional and unconditional rows in one batch, static KV cache,
  eager decode steps (`engine`) and compiled ones (`engine_compiled`; the default on CUDA, opt-in
  on the CPU: its warm-up call, which compiles, is reported as `compile_seconds`);
- the eager engine with transformers' growing DynamicCache, and without a KV cache (every step
  recomputes the whole sequence);
- `model.generate(guidance_scale=1.5)` with a logits processor that allows image ids only, which is
  how transformers does CFG (the unconditional pass is a second, unbatched forward).
Each is timed as the median of --repeats runs after a warm-up, the ways taking turns so that a
machine busy with other work slows them alike. `speedup_vs_generate` is for the engine as this
device runs it by default, `speedup_vs_generate_compiled` for the compiled one; the figures append
to benchmarks/results.jsonl with the device named (unless --no-save).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from transformers import LogitsProcessor, LogitsProcessorList

import ugen
from ugen.model import PRESETS, build_model, inference_dtype
from ugen.runtime import pick_device
from ugen.sampling import Engine, SamplingParams
from ugen.sequences import t2i_prompt
from ugen.vocab import Vocab

from speed import device_name, report, sync  # benchmarks/ is the script's directory, first on sys.path

COLORS = ("red", "blue", "green", "yellow", "purple", "orange", "pink", "brown")
SHAPES = ("circle", "square")


class ImageIdsOnly(LogitsProcessor):
    """Inside the image span only image ids may be drawn: the engine's modality constraint."""

    def __init__(self, allowed: torch.Tensor):
        self.allowed = allowed

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores.masked_fill(~self.allowed, float("-inf"))


def timed(runs: dict, repeats: int, device: torch.device) -> dict[str, float]:
    """The median seconds of each run, the runs taking turns (warm-ups done by the caller)."""
    seconds = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            sync(device)
            began = time.perf_counter()
            run()
            sync(device)
            seconds[name].append(time.perf_counter() - began)
    return {name: statistics.median(s) for name, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/default/model", help="a model directory")
    parser.add_argument("--preset", choices=list(PRESETS), default=None, help="random weights of this preset instead of --model")
    parser.add_argument("--grid", type=int, default=6, help="with --preset: image codes a side (6 for Shapes)")
    parser.add_argument("--codes", type=int, default=1000, help="with --preset: image codebook size")
    parser.add_argument("--prompts", type=int, default=16, help="prompts, one image each")
    parser.add_argument("--cfg", type=float, default=1.5)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--no-save", action="store_true", help="print the result without appending it to results.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.preset:
        device = pick_device(args.device)
        vocab, grid = Vocab(num_text=512, num_image=args.codes), args.grid
        torch.manual_seed(0)
        net = build_model(args.preset, vocab, grid * grid + 32, device).to(inference_dtype(device)).eval()
        captions = [[(5 * i + j) % 500 for j in range(3 + i % 4)] for i in range(args.prompts)]  # text ids, lengths vary
    else:
        model = ugen.load(args.model, args.device)
        net, device, vocab, grid = model.model, model.device, model.vocab, model.image_tokenizer.grid
        texts = [f"a {COLORS[i % len(COLORS)]} {SHAPES[(i // len(COLORS)) % len(SHAPES)]}" for i in range(args.prompts)]
        captions = [model.text.encode(t) for t in texts]
    n = grid * grid
    params = SamplingParams(args.temperature, 0, 1.0, args.cfg)

    eager = Engine(net, vocab, grid, compile=False)
    compiled = Engine(net, vocab, grid, compile=True)

    def engine(cache: str = "static", engine: Engine = eager):
        generator = torch.Generator(device).manual_seed(0)
        prompts = [t2i_prompt(vocab, c) for c in captions]
        uncond = [t2i_prompt(vocab, None)] * len(prompts)
        return engine.generate(prompts, params=params, generator=generator, uncond_prompts=uncond,
                               max_new_tokens=n + 1, stop_ids=(vocab.eoi,), cache=cache)

    # transformers' generate: left-padded conditional prompts, the unconditional prompt as negative_prompt_ids
    prompts = [t2i_prompt(vocab, c) for c in captions]
    length = max(map(len, prompts))
    input_ids = torch.tensor([[vocab.pad] * (length - len(p)) + p for p in prompts], device=device)
    attention_mask = (torch.arange(length, device=device)[None] >= torch.tensor([length - len(p) for p in prompts], device=device)[:, None]).long()
    negative = torch.tensor([t2i_prompt(vocab, None)] * len(prompts), device=device)
    allowed = torch.zeros(vocab.size, dtype=torch.bool, device=device)
    allowed[vocab.image_start:] = True

    def hf_generate():
        torch.manual_seed(0)
        return net.generate(
            input_ids=input_ids, attention_mask=attention_mask, guidance_scale=args.cfg,
            negative_prompt_ids=negative, negative_prompt_attention_mask=torch.ones_like(negative),
            logits_processor=LogitsProcessorList([ImageIdsOnly(allowed)]), do_sample=True,
            temperature=args.temperature, top_k=0, top_p=1.0, max_new_tokens=n, min_new_tokens=n,
            pad_token_id=vocab.pad, eos_token_id=vocab.eoi)

    drawn = hf_generate()[:, length:]
    assert drawn.shape == (len(prompts), n) and bool((drawn >= vocab.image_start).all()), "generate drew other ids"
    runs = {
        "engine": engine,
        "engine_compiled": lambda: engine(engine=compiled),
        "engine_dynamic_cache": lambda: engine("dynamic"),
        "engine_no_cache": lambda: engine("none"),
        "hf_generate_cfg": hf_generate,
    }
    sync(device)
    began = time.perf_counter()
    drawn = engine(engine=compiled)  # compiles the decode step for these shapes
    sync(device)
    compile_seconds = time.perf_counter() - began
    same_tokens = drawn == engine()  # on the CPU they should be; bf16 on CUDA may round differently
    for run in runs.values():
        run()  # warm-up
    seconds = timed(runs, args.repeats, device)
    default = "engine_compiled" if Engine(net, vocab, grid).compile else "engine"  # how `ugen` runs on this device
    result = {
        "benchmark": "sampler", "model": f"random {args.preset}" if args.preset else args.model,
        "device": device_name(device), "torch": torch.__version__,
        "prompts": len(prompts), "codes_per_image": n, "cfg": args.cfg, "temperature": args.temperature,
        "seconds": {k: round(v, 4) for k, v in seconds.items()}, "compile_seconds": round(compile_seconds, 1),
        "compiled_same_tokens": same_tokens, "default_engine": default,
        "speedup_vs_generate": round(seconds["hf_generate_cfg"] / seconds[default], 2),
        "speedup_vs_generate_compiled": round(seconds["hf_generate_cfg"] / seconds["engine_compiled"], 2),
        "speedup_vs_no_cache": round(seconds["engine_no_cache"] / seconds["engine"], 2),
        "date": time.strftime("%Y-%m-%d"), "command": " ".join(["python benchmarks/sampler.py", *sys.argv[1:]]),
    }
    report(result, save=not args.no_save, indent=2)


if __name__ == "__main__":
    main()
