"""Evaluate a model directory on the test split of its data (Shapes by default).

    python eval/evaluate.py --model runs/default/model [--seed 0]
    python eval/evaluate.py --model runs/default/model --split validation   # to choose by, not to report
    python eval/evaluate.py --model runs/mine/model [--reward-model PATH]     # a model of your own data

On data other than Shapes there are no scenes to judge by, so only what applies runs (captions:
BLEU-4 and CIDEr-D against the row's captions; reconstruction: SSIM, VQ feature cosine and, with
--reward-model, a local vision model's feature cosine; text bits per byte of the captions; the
tokenizer), and one line says what is skipped.

`--split validation` scores the validation split instead, with GenEval prompts drawn afresh
(`ugen.geneval.make_prompts(seed=1)`, as eval/sampling_sweep.py does) and other PIL shapes: a
setting (an RL reward, a schedule) chosen by it is not chosen on the test.

Writes `results.json` (every score with its sample count), `report.md` and its pictures into an
`eval/` folder beside the model directory, and prints a summary table. Categories:

  summary        the headline numbers, as in UGen's Figure 1: Text (text-only QA), Image-Und (mean of
                 caption F1 and VQA), Image-Gen (GenEval overall) and their unweighted mean.
  generation     GenEval-style: the six tasks of `eval/prompts/geneval.json`, several images per
                 prompt, each judged by the Shapes parser (`ugen.geneval.score`); `overall` is the
                 unweighted mean of the six. A sanity row first checks the judge on ground-truth
                 renders of every prompt and stops the run if it scores below 0.99 on a task.
                 `single_object_exact`: images drawn for "a <color> <shape>" that parse to exactly
                 that one object.
  understanding  captions of the test images: attribute precision / recall / F1, count accuracy
                 and place (spatial layout) precision / recall / F1 against the scene; BLEU-4 and CIDEr-D (x10 scale, not in [0, 1]) against the reference
                 captions; `single_object` (the caption names exactly the right color and shape);
                 `single_object_pil`: the same for single shapes drawn by a plain PIL script
                 (eval/pil_shapes.py: other shades, sizes, places, backgrounds); VQA
                 exact match by question type; `perception`: the fine-grained subset (the small
                 object's color, whether a small object is present, the color at a place).
  reconstruction image -> caption -> image by the model, scored against the original by the
                 parser's object F1 (strict, and on color and shape alone: named_f1), SSIM and
                 the VQ encoder's feature cosine; `overall` their mean.
  text           bits per byte of the test split's held-out passages (not in [0, 1]); `qa`: the
                 same questions as VQA answered from the passage alone, by question type.
  tokenizer      PSNR (dB), SSIM, codebook usage, and the parser's exact reading of VQ
                 reconstructions (the ceiling of generation).
  interleaved    text with images inside it (`UGen.write`), started from the first INTERLEAVED_PROMPTS
                 GenEval prompts of each task: `image_matches_sentence`, of the images drawn
                 mid-text after a sentence that names colored shapes, those that parse to exactly
                 the colors and shapes it names (with their counts; sizes and places not checked);
                 `images_per_sample`, the mean number drawn (not in [0, 1]). Not in the summary.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server
import matplotlib.pyplot as plt
import numpy as np
import PIL.Image
import torch
from torchmetrics.functional.text import bleu_score
from tqdm import tqdm

import ugen
from ugen import geneval, rewards
from ugen.api import GENERATE_DEFAULTS, WRITE_DEFAULTS, save_parts
from ugen.metrics import (
    accuracy_by_type,
    bits_per_byte,
    caption_attributes,
    caption_names_scene,
    cider,
    image_shows,
    images_match_sentences,
    mean,
    tokenizer_metrics,
)
from ugen.data import add_source_args, data_of_model, load_examples
from ugen.errors import UserError
from ugen.model import read_meta
from ugen.runtime import pick_device, run_main, write_json
from ugen.sampling import SamplingParams
from ugen.shapes import COLORS, SHAPES, Scene, ShapeObject, caption_objects, make_examples, parse

from pil_shapes import draw_single_shapes  # eval/, the script's directory, is first on sys.path

PROMPTS = Path(__file__).with_name("prompts") / "geneval.json"
SHAPES_ONLY_PARTS = ("GenEval generation and its judge, caption attributes, VQA and perception, text QA, "
                     "reconstruction object F1 and the summary row")
PERCEPTION_TYPES = ("small_color", "small_present", "color_at")  # in the spirit of MMT-Bench
JUDGE_MINIMUM = 0.99
PIL_SHAPES = 200  # single shapes drawn by eval/pil_shapes.py for the model to caption
# The seed of each split's GenEval prompts and PIL shapes: the test's prompts are the file
# eval/make_prompts.py wrote with seed 0; validation's are drawn afresh (and sampling_sweep.py's).
SPLIT_SEEDS = {"test": 0, "validation": 1}
GRID_IMAGES = 16  # samples shown per generation task in the report
INTERLEAVED_PROMPTS = 10  # per GenEval task: the starts of the interleaved samples
INTERLEAVED_SHOWN = 4  # of them in the report


def judge_sanity(prompts: dict[str, list[geneval.PromptSpec]]) -> dict[str, dict]:
    """The judge on ground-truth renders of every prompt: a low generation score must be the model's."""
    from ugen.shapes import render

    rng = random.Random(0)
    rows = {}
    for task, specs in prompts.items():
        flags = [geneval.score(parse(render(geneval.ground_truth_scene(s, rng))), s) for s in specs]
        rows[task] = {"score": mean(flags), "n": len(flags)}
    failing = {t: r["score"] for t, r in rows.items() if r["score"] < JUDGE_MINIMUM}
    if failing:
        raise SystemExit(f"the judge scores below {JUDGE_MINIMUM} on ground-truth images: {failing}")
    return rows


def generation(model, prompts, images_per_prompt: int, params: SamplingParams, seed: int) -> tuple[dict, dict]:
    """GenEval task scores and, per task, a few sample images for the report."""
    scores, samples = {}, {}
    for task, specs in tqdm(prompts.items(), desc="generation", leave=False):
        codes = model.generate_codes([s.prompt for s in specs], images_per_prompt, params, seed)
        images = model.decode_codes(codes)
        repeated = [s for s in specs for _ in range(images_per_prompt)]
        flags = [geneval.score(parse(img), spec) for img, spec in zip(images, repeated)]
        scores[task] = {"score": mean(flags), "n": len(flags)}
        samples[task] = (images[:: images_per_prompt][:GRID_IMAGES], [s.prompt for s in specs[:GRID_IMAGES]])
    scores["overall"] = {"score": geneval.overall({t: r["score"] for t, r in scores.items()}),
                         "n": sum(r["n"] for r in scores.values())}

    single = [(f"a {c} {s}", Scene((ShapeObject(s, c, "large", 24.0, 24.0, 15.0),))) for c in COLORS for s in SHAPES]
    codes = model.generate_codes([p for p, _ in single], images_per_prompt, params, seed)
    flags = [image_shows(img, scene) for img, (_, scene) in
             zip(model.decode_codes(codes), (x for x in single for _ in range(images_per_prompt)))]
    scores["single_object_exact"] = {"score": mean(flags), "n": len(flags)}
    return scores, samples


def interleaved(model, prompts: dict[str, list[geneval.PromptSpec]], seed: int) -> tuple[dict, list]:
    """Does an image drawn mid-text show what the sentence before it says? (see the docstring) The
    scores and the first samples, for the report."""
    starts = [spec.prompt for specs in prompts.values() for spec in specs[:INTERLEAVED_PROMPTS]]
    samples = model.write(starts, WRITE_DEFAULTS, seed)
    matches = [m for parts in samples for m in images_match_sentences(parts)]
    drawn = [sum(isinstance(p, PIL.Image.Image) for p in parts) for parts in samples]
    scores = {"image_matches_sentence": {"score": mean(matches), "n": len(matches)},  # NaN when none drawn
              "images_per_sample": {"score": mean(drawn), "n": len(drawn)}}
    return scores, samples[:INTERLEAVED_SHOWN]


def understanding(model, examples, seed: int, shapes: bool, pil_seed: int = 0) -> tuple[dict, list[str]]:
    """Captions of the test images against their references (BLEU-4, CIDEr-D), and on Shapes the
    attributes, counts and places they name, VQA and perception."""
    captions = []
    for start in tqdm(range(0, len(examples), 128), desc="captions", leave=False):
        captions += model.caption([e.image for e in examples[start : start + 128]], seed=seed)
    # Corpus BLEU-4 (torchmetrics) and CIDEr-D (pycocoevalcap) against the reference captions (Shapes:
    # the long dense caption and the short one; other data: every caption of the row).
    references = [[e.caption, *(p for p in e.prompts if p != e.caption)] for e in examples]
    results = {"caption_bleu4": {"score": float(bleu_score(captions, references)), "n": len(examples)},
               "caption_cider": {"score": cider(captions, references), "n": len(examples)}}
    if not shapes:
        return results, captions
    attributes = [caption_attributes(c, e.scene) for c, e in zip(captions, examples)]
    results |= {f"caption_{k}": {"score": mean(a[k] for a in attributes), "n": len(attributes)}
                for k in ("precision", "recall", "f1", "count_correct", "place_precision", "place_recall", "place_f1")}
    singles = [(c, e) for c, e in zip(captions, examples) if len(e.scene.objects) == 1]
    results["caption_single_object"] = {"score": mean(caption_names_scene(c, e.scene) for c, e in singles), "n": len(singles)}
    # Single shapes another program drew (its own shades, sizes, places, backgrounds): the caption
    # must name that one color and shape, and nothing else.
    drawn = draw_single_shapes(PIL_SHAPES, seed=pil_seed, size=model.image_size)
    named = model.caption([image for image, _, _ in drawn], seed=seed)
    results["caption_single_object_pil"] = {
        "score": mean([(c, s) for _, c, s in caption_objects(text)] == [(color, shape)] for text, (_, shape, color) in zip(named, drawn)),
        "n": len(drawn)}

    by_type = question_answering(model.answer, [(e.image, q, a, kind) for e in examples for q, a, kind in e.qa], seed)
    results |= accuracy_rows("vqa", by_type)
    perception = [f for kind in PERCEPTION_TYPES for f in by_type.get(kind, [])]
    results["perception"] = {"score": mean(perception), "n": len(perception)}
    return results, captions


def question_answering(answer_fn, questions: list[tuple], seed: int, chunk: int = 256) -> dict[str, list[bool]]:
    """Exact-match flags by question type; `questions` are (context, question, answer, type) and
    `answer_fn(contexts, questions, seed=)` is `model.answer` (images) or `model.answer_text` (passages)."""
    predicted = []
    for start in tqdm(range(0, len(questions), chunk), desc="questions", leave=False):
        rows = questions[start : start + chunk]
        predicted += answer_fn([r[0] for r in rows], [r[1] for r in rows], seed=seed)
    return accuracy_by_type(predicted, [r[2] for r in questions], [r[3] for r in questions])


def accuracy_rows(name: str, by_type: dict[str, list[bool]]) -> dict[str, dict]:
    rows = {name: {"score": mean(f for flags in by_type.values() for f in flags), "n": sum(map(len, by_type.values()))}}
    return rows | {f"{name}_{kind}": {"score": mean(flags), "n": len(flags)} for kind, flags in by_type.items()}


def text(model, examples, seed: int, shapes: bool) -> dict:
    """Bits per byte of the held-out passages (other data: the captions), and on Shapes the
    questions answered from the passage alone."""
    rows = {"bits_per_byte": {"score": bits_per_byte(model, [e.passage for e in examples]), "n": len(examples)}}
    if not shapes:
        return rows
    by_type = question_answering(model.answer_text, [(e.passage, q, a, kind) for e in examples for q, a, kind in e.qa], seed)
    return rows | accuracy_rows("qa", by_type)


def summary(results: dict) -> dict:
    """The headline numbers in the style of UGen's Figure 1, each in [0, 1]: Text (text-only QA),
    Image-Und (mean of caption attribute F1 and VQA accuracy), Image-Gen (GenEval overall), and
    `overall`, the unweighted mean of the three."""
    und = results["understanding"]
    rows = {
        "text": results["text"]["qa"],
        "image_und": {"score": mean([und["caption_f1"]["score"], und["vqa"]["score"]]),
                      "n": und["caption_f1"]["n"] + und["vqa"]["n"]},
        "image_gen": results["generation"]["overall"],
    }
    rows["overall"] = {"score": mean(r["score"] for r in rows.values()), "n": sum(r["n"] for r in rows.values())}
    return rows


def similarities(model, shapes: bool, reward_model: str | None) -> dict:
    """How a reconstruction is compared with its original: SSIM and the VQ encoder's feature
    cosine always; on Shapes the parser's object F1, strict (size and centre within 3 px, which an
    image drawn from a caption of free layouts rarely meets) and on color and shape alone
    (`named_f1`); a local vision model's feature cosine when given."""
    chosen = {"object_f1": rewards.object_f1, "named_f1": rewards.named_f1} if shapes else {}
    chosen |= {"ssim": rewards.ssim, "vq_feature_cosine": rewards.VQFeatureCosine(model.image_tokenizer)}
    if reward_model is not None:
        chosen["hf_feature_cosine"] = rewards.HFVisionCosine(reward_model, model.device)
    return chosen


def reconstruction(model, examples, captions: list[str], params: SamplingParams, seed: int, scores: dict) -> dict:
    """Image -> the model's caption -> the model's image, scored against the original (UAE's
    Unified-Bench idea) by each of `scores` (`similarities`); `overall` is their mean. An empty
    caption cannot condition generation: its reconstruction is a blank image, scored as such."""
    usable = [i for i, c in enumerate(captions) if c.strip()]
    blank = np.full_like(examples[0].image, 245)
    recon = [blank] * len(examples)
    if usable:
        drawn = model.decode_codes(model.generate_codes([captions[i] for i in usable], 1, params, seed))
        for i, image in zip(usable, drawn):
            recon[i] = image
    rows = {name: {"score": mean(fn(e.image, r, e.scene) for e, r in zip(examples, recon)), "n": len(examples)}
            for name, fn in scores.items()}
    rows["overall"] = {"score": mean(r["score"] for r in rows.values()), "n": len(examples)}
    return rows


def tokenizer(model, examples) -> dict:
    metrics = tokenizer_metrics(model.image_tokenizer, examples)
    names = {"psnr_db": "psnr_db", "ssim": "ssim", "codebook_usage": "codebook_usage", "parser_image_exact": "parser_on_reconstructions"}
    return {row: {"score": metrics[key], "n": len(examples)} for key, row in names.items() if key in metrics}  # parser: Shapes only


def write_report(out: Path, results: dict, samples: dict, captions: list, interleaved_samples: list = (),
                 upscale: int = 3) -> None:
    """report.md with the tables, an image grid per generation task, samples of text with images
    inside it (each also as interleaved-N.md) and a bar plot."""
    lines = ["# ugen evaluation", "", f"Model: `{results['model']}`, {results['split']} split, sampling seed {results['seed']}.", ""]
    for category, rows in results["results"].items():
        lines += [f"## {category}", "", "| metric | score | n |", "| --- | --- | --- |"]
        lines += [f"| {name} | {r['score']:.3f} | {r['n']} |" for name, r in rows.items()]
        lines.append("")
    lines += ["## Generated samples", ""]
    for task, (images, prompts) in samples.items():
        grid = np.concatenate(list(images), axis=1)
        PIL.Image.fromarray(grid).resize((grid.shape[1] * upscale, grid.shape[0] * upscale), 0).save(out / f"samples-{task}.png")
        lines += [f"**{task}**: " + "; ".join(f"{i + 1}. {p}" for i, p in enumerate(prompts)), "",
                  f"![{task}](samples-{task}.png)", ""]
    if interleaved_samples:
        lines += ["## Text with images inside it", ""]
    for i, parts in enumerate(interleaved_samples, 1):
        lines += [f"**sample {i}**", "", save_parts(parts, out / f"interleaved-{i}.md", upscale)[0].read_text()]
    lines += ["## Captions", "", "| model | reference |", "| --- | --- |"]
    lines += [f"| {c} | {r} |" for c, r in captions] + [""]
    if "generation" not in results["results"]:  # GenEval is Shapes-only
        (out / "report.md").write_text("\n".join(lines))
        return

    gen = results["results"]["generation"]
    tasks = list(geneval.TASKS) + ["overall"]
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.bar(tasks, [gen[t]["score"] for t in tasks], color=["#4a7ab0"] * 6 + ["#c0504d"])
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction correct")
    ax.set_title("GenEval-style generation on Shapes")
    ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    fig.savefig(out / "generation.png", dpi=100)
    plt.close(fig)
    lines += ["## Plot", "", "![generation scores](generation.png)", ""]
    (out / "report.md").write_text("\n".join(lines))


def default_out(model: Path, split: str = "test") -> Path:
    """eval/ beside the model directory; eval-NAME/ for a directory not named `model` (such as
    model-rl), so that evaluating two models of one run never overwrites either's results; with a
    -validation suffix for the validation split."""
    model = model.resolve()
    name = "eval" if model.name == "model" else f"eval-{model.name}"
    return model.parent / (name if split == "test" else f"{name}-{split}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/default/model", help="model directory")
    add_source_args(parser, from_model=True)
    parser.add_argument("--split", choices=["test", "validation"], default="test",
                        help="validation: to choose a setting by (other scenes, GenEval prompts and PIL shapes)")
    parser.add_argument("--num-test", type=int, default=500, help="images of the split (Shapes: scenes of the world's seed 0)")
    # Every test scene by default: what RL changes in reconstruction (a few hundredths) differs in
    # sign between sets of 128-200 images, so a smaller set says more about its images than the model.
    parser.add_argument("--num-reconstruct", type=int, default=500, help="test images for the reconstruction score (at most --num-test)")
    parser.add_argument("--reward-model", default=None,
                        help="local Hugging Face vision model (CLIP, DINOv2, ...): reconstruction is also scored by its feature cosine")
    parser.add_argument("--prompts-per-task", type=int, default=None, help="first N prompts of each generation task (default: all)")
    parser.add_argument("--images-per-prompt", type=int, default=4, help="images drawn per generation prompt")
    parser.add_argument("--cfg", type=float, default=GENERATE_DEFAULTS.cfg, help="guidance scale for generation")
    parser.add_argument("--temperature", type=float, default=GENERATE_DEFAULTS.temperature, help="generation temperature")
    parser.add_argument("--top-k", type=int, default=GENERATE_DEFAULTS.top_k, help="generation top-k (0: all)")
    parser.add_argument("--top-p", type=float, default=GENERATE_DEFAULTS.top_p, help="generation top-p")
    parser.add_argument("--plan-temperature", type=float, default=GENERATE_DEFAULTS.plan_temperature,
                        help="temperature of the plan a model pretrained with --plan writes before it draws")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--out", default=None, help="results directory (default: eval/ beside the model, eval-NAME/ for MODEL-NAME)")
    args = parser.parse_args(argv)

    start = time.monotonic()
    torch.manual_seed(args.seed)
    data_of_model(args, read_meta(args.model))
    shapes = args.data == "shapes"
    model = ugen.load(args.model, pick_device(args.device))
    params = SamplingParams(args.temperature, args.top_k, args.top_p, args.cfg, args.plan_temperature)
    if shapes:
        examples = make_examples(args.split, args.num_test, seed=0, image_size=model.image_size)
    else:
        examples, skipped = load_examples(args.data, args.split, image_column=args.image_column, text_column=args.text_column,
                                          image_size=model.image_size, num=args.num_test)
        if not examples:
            raise UserError(f"{args.data}: the {args.split} split has no readable examples")
        print(f"evaluate: {args.data} has no Shapes scenes: skipping {SHAPES_ONLY_PARTS}"
              + (f"; skipped {skipped} unreadable {args.split} rows" if skipped else ""), file=sys.stderr)

    results, interleaved_samples = {}, []
    if shapes:
        # the test's prompts are the file's; validation's as many, drawn afresh from another seed
        all_prompts = geneval.load_prompts(PROMPTS)
        if args.split == "validation":
            all_prompts = geneval.make_prompts(seed=SPLIT_SEEDS["validation"], per_task=len(next(iter(all_prompts.values()))))
        prompts = {task: specs[: args.prompts_per_task] for task, specs in all_prompts.items()}
        results["judge_sanity"] = judge_sanity(prompts)
        results["generation"], samples = generation(model, prompts, args.images_per_prompt, params, args.seed)
        results["interleaved"], interleaved_samples = interleaved(model, prompts, args.seed)
    results["understanding"], captions = understanding(model, examples, args.seed, shapes, pil_seed=SPLIT_SEEDS[args.split])
    scores = similarities(model, shapes, args.reward_model)
    results["reconstruction"] = reconstruction(model, examples[: args.num_reconstruct], captions[: args.num_reconstruct],
                                               params, args.seed, scores)
    results["text"] = text(model, examples, args.seed, shapes)
    results["tokenizer"] = tokenizer(model, examples)
    if shapes:
        results = {"summary": summary(results), **results}
    else:  # the report shows images drawn from the first test captions
        shown = examples[:GRID_IMAGES]
        samples = {"test_captions": (model.decode_codes(model.generate_codes([e.caption for e in shown], 1, params, args.seed)),
                                     [e.caption for e in shown])}
    results = {"model": str(args.model), "data": args.data, "split": args.split, "seed": args.seed,
               "sampling": {"cfg": params.cfg, "temperature": params.temperature, "top_k": params.top_k, "top_p": params.top_p},
               "results": results}
    out = Path(args.out or default_out(Path(args.model), args.split))
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    write_report(out, results, samples, list(zip(captions[:8], [e.caption for e in examples[:8]])), interleaved_samples)

    print(f"{'category':<14} {'metric':<28} {'score':>7} {'n':>6}")
    for category, rows in results["results"].items():
        for name, r in rows.items():
            print(f"{category:<14} {name:<28} {r['score']:>7.3f} {r['n']:>6}")
    print(f"evaluate: {time.monotonic() - start:.0f} s -> {out / 'results.json'}, {out / 'report.md'}", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
