"""UGen's ablation: vanilla against progressive vocabulary learning, from scratch and from a
pretrained text LM, several seeds each.

    python eval/ablation.py [--root runs/ablation] [--preset tiny] [--seeds 0 1 2] [--jobs 2]

Every run shares one VQ and one text tokenizer (trained once, seed 0, under ROOT). UGen's setting
is a *pretrained* LM whose text ability the progressive schedule protects, so there are two
starts: `scratch` (a new --preset model) and `text-lm`, a ugen model of the same preset trained
on the world's passages and their questions alone (`--mix text=1,text_qa=1`, seed 0, ROOT/text-lm,
`--text-lm-steps`), started from through `--init-from` (its image rows reset). From each start,
three arms that differ only in the schedule, after the same text-only phase (`--text-only-steps`
of pretrain.py, in every arm):

  vanilla                every image id active from the first image step
  progressive-random     ids switched on over time in a random order (the paper)
  progressive-frequency  ids switched on most frequent first (pretrain.py's default --vocab-order)

Seed S fixes the training data, the data order and the initialization of a start's three arms,
and is the sampling seed of their evaluation. Each run is `ROOT/<start>-<arm>-seed<S>`, trained
with `--resume` and evaluated by `eval/evaluate.py`; a finished step is skipped, so a killed
ablation picks up where it stopped. The tables (Text, Image-Und, Image-Gen and overall from each
evaluation's `summary`, mean ± sample std over seeds, each arm's change against vanilla, and the
text ability of the text LM before images joined beside each arm's after) go to ROOT/ablation.md
and ROOT/ablation.json. Trainings write their output to ROOT/<run>/train.log.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from ugen.errors import UserError
from ugen.metrics import mean_std
from ugen.model import PRESETS
from ugen.runtime import run_logged, run_main, write_json

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ARMS = {"vanilla": ["--vocab-schedule", "vanilla"],
        "progressive-random": ["--vocab-schedule", "progressive", "--vocab-order", "random"],
        "progressive-frequency": ["--vocab-schedule", "progressive", "--vocab-order", "frequency"]}
STARTS = ("scratch", "text-lm")
TEXT_LM_MIX = "text=1,text_qa=1"
COLUMNS = {"text": "Text", "image_und": "Image-Und", "image_gen": "Image-Gen", "overall": "overall"}


def _pretrain(run: Path, root: Path, seed: int, args: argparse.Namespace, extra: list[str]) -> list[str]:
    """A train/pretrain.py command on the shared tokenizers; `extra` last, so that --pretrain-args
    cannot blur what tells runs apart."""
    cmd = ["train/pretrain.py", "--run-dir", str(run), "--vq", str(root / "vq"),
           "--text-tokenizer", str(root / "text" / "text.model"), "--seed", str(seed), "--resume"]
    return cmd + shlex.split(args.pretrain_args) + extra


def train_text_lm(root: Path, args: argparse.Namespace, threads: int) -> Path:
    """The pretrained text LM every text-lm run starts from (seed 0), once."""
    model = root / "text-lm" / "model"
    if not (model / "ugen.json").is_file():
        extra = ["--preset", args.preset, "--mix", TEXT_LM_MIX, "--vocab-schedule", "vanilla", "--text-only-steps", "0",
                 "--steps", str(args.text_lm_steps)]
        run_logged(_pretrain(root / "text-lm", root, 0, args, extra), root / "text-lm" / "train.log", threads, cwd=REPO)
    return model


def train_and_evaluate(root: Path, start: str, arm: str, seed: int, args: argparse.Namespace, threads: int) -> Path:
    """One run of the table, skipping whatever a previous ablation already finished."""
    run = root / f"{start}-{arm}-seed{seed}"
    model, results = run / "model", run / "eval" / "results.json"
    if not (model / "ugen.json").is_file():
        init = ["--init-from", str(root / "text-lm" / "model")] if start == "text-lm" else ["--preset", args.preset]
        extra = [*init, *(["--steps", str(args.steps)] if args.steps else []),
                 "--text-only-steps", str(args.text_only_steps), *ARMS[arm]]
        run_logged(_pretrain(run, root, seed, args, extra), run / "train.log", threads, cwd=REPO)
    if not results.is_file() or results.stat().st_mtime < (model / "ugen.json").stat().st_mtime:
        cmd = ["eval/evaluate.py", "--model", str(model), "--seed", str(seed), *shlex.split(args.eval_args)]
        run_logged(cmd, run / "eval.log", threads, cwd=REPO)
    return results


def text_before(model_dir: Path, seeds: list[int], num_test: int) -> dict[str, float]:
    """The text LM's text ability before images join, as evaluate.py scores it (QA from the passage
    alone, the Text column, and bits per byte), over the test scenes, once per sampling seed."""
    from evaluate import text  # eval/ holds scripts: this one's directory is on sys.path

    import ugen
    from ugen.shapes import make_examples

    model = ugen.load(model_dir)
    examples = make_examples("test", num_test, seed=0, image_size=model.image_size)
    runs = [text(model, examples, seed, shapes=True) for seed in seeds]
    return {"text": [r["qa"]["score"] for r in runs], "bits_per_byte": runs[0]["bits_per_byte"]["score"]}


def spread(mean: float, std: float, n: int) -> str:
    """A cell of the tables: mean ± std over n seeds, the mean alone from one seed (no spread to show)."""
    return f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}"


def table(scores: dict[str, list[dict[str, float]]]) -> tuple[str, dict]:
    """Markdown table and its numbers for one start: mean ± std per arm and each progressive arm's
    relative change against vanilla."""
    stats = {a: {c: mean_std(r[c] for r in runs) for c in COLUMNS} for a, runs in scores.items()}
    base = stats["vanilla"]
    gain = {a: {c: 100 * (stats[a][c][0] - base[c][0]) / base[c][0] if base[c][0] else float("nan") for c in COLUMNS}
            for a in stats if a != "vanilla"}
    lines = ["| arm | " + " | ".join(COLUMNS.values()) + " |", "| --- |" + " --- |" * len(COLUMNS)]
    for a in stats:
        n = len(scores[a])
        cells = [spread(m, sd, n) for m, sd in stats[a].values()]
        lines.append(f"| {a} ({n} seed{'s' if n > 1 else ''}) | " + " | ".join(cells) + " |")
    for a, g in gain.items():
        lines.append(f"| {a} vs vanilla | " + " | ".join(f"{g[c]:+.1f}%" for c in COLUMNS) + " |")
    return "\n".join(lines), {"mean_std": stats, "relative_to_vanilla_percent": gain}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="runs/ablation", help="directory of the tokenizers, runs and table")
    parser.add_argument("--preset", choices=list(PRESETS), default="tiny", help="transformer size")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training (and sampling) seeds")
    parser.add_argument("--steps", type=int, default=None, help="pretraining steps of each arm (default: pretrain.py's)")
    parser.add_argument("--text-only-steps", type=int, default=60, help="the text-only phase, the same in every arm")
    parser.add_argument("--text-lm-steps", type=int, default=1200, help="steps of the pretrained text LM")
    parser.add_argument("--starts", nargs="+", choices=STARTS, default=list(STARTS), help="from scratch, from the text LM, or both")
    parser.add_argument("--pretrain-args", default="", help="more flags for every train/pretrain.py run, quoted")
    parser.add_argument("--eval-args", default="", help="more flags for every eval/evaluate.py run, quoted")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once, the CPU threads split between them (2 on a 2-core CPU is ~1.4x faster)")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        raise UserError(f"--seeds {args.seeds}: each seed once")
    if args.jobs < 1:
        raise UserError(f"--jobs must be >= 1, not {args.jobs}")
    eval_flags = shlex.split(args.eval_args)
    num_test = int(eval_flags[eval_flags.index("--num-test") + 1]) if "--num-test" in eval_flags else 500

    started = time.monotonic()
    root = Path(args.root)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    if not (root / "vq" / "vq.safetensors").is_file():
        run_logged(["tokenizers/train_vq.py", "--out", str(root / "vq"), "--seed", "0"], root / "tokenizers.log", threads * args.jobs, cwd=REPO)
    if not (root / "text" / "text.model").is_file():
        run_logged(["tokenizers/train_text.py", "--out", str(root / "text"), "--seed", "0"], root / "tokenizers.log", threads * args.jobs, cwd=REPO)
    if "text-lm" in args.starts:
        train_text_lm(root, args, threads * args.jobs)

    runs = [(start, arm, seed) for seed in args.seeds for start in args.starts for arm in ARMS]
    results = {}
    with ThreadPoolExecutor(args.jobs) as pool, tqdm(total=len(runs), desc="ablation runs", unit="run") as bar:
        futures = {pool.submit(train_and_evaluate, root, *run, args, threads): run for run in runs}
        try:
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update()
        except BaseException:
            pool.shutdown(cancel_futures=True)  # runs not started yet are dropped; running ones finish
            raise

    command = shlex.join(["python", "eval/ablation.py", *(argv if argv is not None else sys.argv[1:])])
    saved, sections = {"command": command}, []
    for start in args.starts:
        scores = {arm: [json.loads(results[(start, arm, seed)].read_text())["results"]["summary"] for seed in args.seeds]
                  for arm in ARMS}
        scores = {arm: [{c: r[c]["score"] for c in COLUMNS} for r in rs] for arm, rs in scores.items()}
        markdown, numbers = table(scores)
        saved[start] = {"per_seed": scores, **numbers}
        heading = "From scratch" if start == "scratch" else f"From the pretrained text LM ({args.text_lm_steps} text-only steps)"
        if start == "text-lm":
            before = text_before(root / "text-lm" / "model", args.seeds, num_test)
            saved[start]["text_lm_before"] = before
            n = len(args.seeds)
            after = {arm: mean_std(r["text"] for r in scores[arm]) for arm in ARMS}
            markdown += (f"\n\nText before images joined (the text LM, QA from the passage alone): "
                         f"{spread(*mean_std(before['text']), n)}, {before['bits_per_byte']:.3f} bits per byte; after: "
                         + ", ".join(f"{arm} {spread(m, sd, n)}" for arm, (m, sd) in after.items()))
        sections.append(f"## {heading}\n\n{markdown}\n")
        print(f"{heading}\n{markdown}\n")
    write_json(root / "ablation.json", saved)
    (root / "ablation.md").write_text(f"# Vanilla vs progressive vocabulary ({args.preset})\n\n`{command}`\n\n" + "\n".join(sections))
    print(f"ablation: {(time.monotonic() - started) / 60:.1f} min -> {root / 'ablation.md'}", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
