"""Evaluate a model directory on the Shapes test split.

    python eval/evaluate.py --model runs/default/model

Scores (each with its sample count), written to `eval/results.json` beside the model directory and
printed as a table:
  caption_single_object     captions of single-object test images that name exactly the right
                            color and shape
  generation_single_object  images drawn for "a <color> <shape>" (every color x shape, several
                            seeds) that the parser reads as exactly that object
  vqa                       exact-match answers to the test split's questions
  vq_reconstruction         the parser's exact reading (shape, color, size, place) of the VQ
                            tokenizer's reconstructions of test images: the ceiling of generation
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import ugen
from ugen.api import GENERATE_DEFAULTS
from ugen.metrics import answer_correct, caption_names_scene, image_shows, mean
from ugen.runtime import pick_device, run_main, write_json
from ugen.sampling import SamplingParams
from ugen.shapes import COLORS, SHAPES, Scene, ShapeObject, make_examples, parse, scene_matches
from ugen.vq import encode_images


def single_object_prompts() -> list[tuple[str, Scene]]:
    """'a red circle' for every color and shape, with the scene it asks for (size and place free)."""
    return [(f"a {c} {s}", Scene((ShapeObject(s, c, "large", 4),))) for c in COLORS for s in SHAPES]


def evaluate(model, num_test: int, images_per_prompt: int, params: SamplingParams, seed: int) -> dict:
    results = {}
    examples = make_examples("test", num_test, seed=0)  # the test set is fixed; --seed drives sampling

    singles = [e for e in examples if len(e.scene.objects) == 1]
    captions = []
    for start in tqdm(range(0, len(singles), 64), desc="captions", leave=False):
        captions += model.caption([e.image for e in singles[start : start + 64]], seed=seed)
    flags = [caption_names_scene(c, e.scene) for c, e in zip(captions, singles)]
    results["caption_single_object"] = {"score": mean(flags), "n": len(flags),
                                        "examples": [[e.caption, c] for e, c in zip(singles[:5], captions)]}

    prompts = single_object_prompts()
    codes = model.generate_codes([p for p, _ in prompts], images_per_prompt, params, seed)
    images = model.decode_codes(codes)
    flags = [image_shows(img, scene) for img, (_, scene) in zip(images, (p for p in prompts for _ in range(images_per_prompt)))]
    results["generation_single_object"] = {"score": mean(flags), "n": len(flags), "cfg": params.cfg,
                                           "temperature": params.temperature, "top_k": params.top_k}

    questions = [(e, q, a) for e in examples for q, a, _ in e.qa[:2]]
    answers = []
    for start in tqdm(range(0, len(questions), 128), desc="questions", leave=False):
        chunk = questions[start : start + 128]
        answers += model.answer([e.image for e, _, _ in chunk], [q for _, q, _ in chunk], seed=seed)
    flags = [answer_correct(p, a) for p, (_, _, a) in zip(answers, questions)]
    results["vqa"] = {"score": mean(flags), "n": len(flags)}

    originals = np.stack([e.image for e in examples])
    recon = model.decode_codes(encode_images(model.image_tokenizer, originals))
    flags = [scene_matches(parse(r), e.scene) for r, e in zip(recon, examples)]
    results["vq_reconstruction"] = {"score": mean(flags), "n": len(flags)}
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/default/model", help="model directory")
    parser.add_argument("--num-test", type=int, default=500, help="test scenes (fixed, seed 0)")
    parser.add_argument("--images-per-prompt", type=int, default=4, help="images drawn per generation prompt")
    parser.add_argument("--cfg", type=float, default=GENERATE_DEFAULTS.cfg, help="guidance scale for generation")
    parser.add_argument("--temperature", type=float, default=GENERATE_DEFAULTS.temperature, help="generation temperature")
    parser.add_argument("--top-k", type=int, default=GENERATE_DEFAULTS.top_k, help="generation top-k (0: all)")
    parser.add_argument("--top-p", type=float, default=GENERATE_DEFAULTS.top_p, help="generation top-p")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--out", default=None, help="results directory (default: eval/ beside the model)")
    args = parser.parse_args(argv)

    start = time.monotonic()
    torch.manual_seed(args.seed)
    model = ugen.load(args.model, pick_device(args.device))
    params = SamplingParams(args.temperature, args.top_k, args.top_p, args.cfg)
    results = evaluate(model, args.num_test, args.images_per_prompt, params, args.seed)
    out = Path(args.out or Path(args.model).resolve().parent / "eval")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", {"model": str(args.model), "seed": args.seed, "results": results})
    print(f"{'metric':<26} {'score':>7} {'n':>6}")
    for name, r in results.items():
        print(f"{name:<26} {r['score']:>7.3f} {r['n']:>6}")
    print(f"evaluate: {time.monotonic() - start:.0f} s -> {out / 'results.json'}", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
