"""UGen's ablation: vanilla against progressive vocabulary learning, several seeds each.

    python eval/ablation.py [--root runs/ablation] [--preset tiny] [--seeds 0 1 2] [--jobs 2]

Every run shares one VQ and one text tokenizer (trained once, seed 0, under ROOT) and differs
from its twin only in the schedule: `progressive` is `train/pretrain.py`'s default (text-only phase,
then image ids switched on over time); `vanilla` has every image id and every task from step 0
(`--vocab-schedule vanilla --text-only-steps 0`). Seed S fixes the training data, the data order
and the initialization of both twins, and is the sampling seed of their evaluation.

Each run is `ROOT/<schedule>-seed<S>`, trained with `--resume` and evaluated by `eval/evaluate.py`;
a finished step is skipped, so a killed ablation picks up where it stopped. The table (Text,
Image-Und, Image-Gen and overall from each evaluation's `summary`, mean ± sample std over seeds,
and the relative improvement of progressive over vanilla) goes to ROOT/ablation.md and
ROOT/ablation.json. Trainings write their output to ROOT/<run>/train.log.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from ugen.errors import UserError
from ugen.metrics import mean_std
from ugen.model import PRESETS
from ugen.runtime import run_main, write_json

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SCHEDULES = {"vanilla": ["--vocab-schedule", "vanilla", "--text-only-steps", "0"],
             "progressive": ["--vocab-schedule", "progressive"]}
COLUMNS = {"text": "Text", "image_und": "Image-Und", "image_gen": "Image-Gen", "overall": "overall"}


def run_logged(cmd: list[str], log: Path, threads: int) -> None:
    """Run a stage script with its output in `log`; a failure names the log to read."""
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        done = subprocess.run([sys.executable, *cmd], cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        raise UserError(f"{cmd[0]} failed (exit {done.returncode}); see {log}")


def train_and_evaluate(root: Path, schedule: str, seed: int, args: argparse.Namespace, threads: int) -> Path:
    """One run of the table, skipping whatever a previous ablation already finished."""
    run = root / f"{schedule}-seed{seed}"
    model, results = run / "model", run / "eval" / "results.json"
    if not (model / "ugen.json").is_file():
        cmd = ["train/pretrain.py", "--run-dir", str(run), "--vq", str(root / "vq"),
               "--text-tokenizer", str(root / "text" / "text.model"), "--preset", args.preset,
               "--seed", str(seed), "--resume"]
        cmd += (["--steps", str(args.steps)] if args.steps else []) + shlex.split(args.pretrain_args)
        cmd += SCHEDULES[schedule]  # last, so that --pretrain-args cannot blur the two arms
        run_logged(cmd, run / "train.log", threads)
    if not results.is_file() or results.stat().st_mtime < (model / "ugen.json").stat().st_mtime:
        cmd = ["eval/evaluate.py", "--model", str(model), "--seed", str(seed), *shlex.split(args.eval_args)]
        run_logged(cmd, run / "eval.log", threads)
    return results


def table(scores: dict[str, list[dict[str, float]]]) -> tuple[str, dict]:
    """Markdown table and its numbers: mean ± std per schedule and the relative improvement."""
    stats = {s: {c: mean_std(r[c] for r in runs) for c in COLUMNS} for s, runs in scores.items()}
    gain = {c: 100 * (stats["progressive"][c][0] - stats["vanilla"][c][0]) / stats["vanilla"][c][0]
            if stats["vanilla"][c][0] else float("nan") for c in COLUMNS}
    lines = ["| schedule | " + " | ".join(COLUMNS.values()) + " |", "| --- |" + " --- |" * len(COLUMNS)]
    for s in SCHEDULES:
        lines.append(f"| {s} ({len(scores[s])} seeds) | " + " | ".join(f"{m:.3f} ± {sd:.3f}" for m, sd in stats[s].values()) + " |")
    lines.append("| progressive vs vanilla | " + " | ".join(f"{gain[c]:+.1f}%" for c in COLUMNS) + " |")
    return "\n".join(lines), {"mean_std": stats, "relative_improvement_percent": gain}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="runs/ablation", help="directory of the tokenizers, runs and table")
    parser.add_argument("--preset", choices=list(PRESETS), default="tiny", help="transformer size")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training (and sampling) seeds")
    parser.add_argument("--steps", type=int, default=None, help="pretraining steps (default: pretrain.py's)")
    parser.add_argument("--pretrain-args", default="", help="more flags for every train/pretrain.py run, quoted")
    parser.add_argument("--eval-args", default="", help="more flags for every eval/evaluate.py run, quoted")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once, the CPU threads split between them (2 on a 2-core CPU is ~1.4x faster)")
    args = parser.parse_args(argv)
    if len(args.seeds) < 2 or len(set(args.seeds)) != len(args.seeds):
        raise UserError(f"--seeds {args.seeds}: at least two distinct seeds are needed for a std")
    if args.jobs < 1:
        raise UserError(f"--jobs must be >= 1, not {args.jobs}")

    start = time.monotonic()
    root = Path(args.root)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    if not (root / "vq" / "vq.safetensors").is_file():
        run_logged(["tokenizers/train_vq.py", "--out", str(root / "vq"), "--seed", "0"], root / "tokenizers.log", threads * args.jobs)
    if not (root / "text" / "text.model").is_file():
        run_logged(["tokenizers/train_text.py", "--out", str(root / "text"), "--seed", "0"], root / "tokenizers.log", threads * args.jobs)

    runs = [(schedule, seed) for seed in args.seeds for schedule in SCHEDULES]
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

    scores = {s: [json.loads(results[(s, seed)].read_text())["results"]["summary"] for seed in args.seeds] for s in SCHEDULES}
    scores = {s: [{c: r[c]["score"] for c in COLUMNS} for r in rs] for s, rs in scores.items()}
    markdown, numbers = table(scores)
    command = shlex.join(["python", "eval/ablation.py", *(argv if argv is not None else sys.argv[1:])])
    write_json(root / "ablation.json", {"command": command, "per_seed": scores, **numbers})
    (root / "ablation.md").write_text(f"# Vanilla vs progressive vocabulary ({args.preset})\n\n`{command}`\n\n{markdown}\n")
    print(markdown)
    print(f"ablation: {(time.monotonic() - start) / 60:.1f} min -> {root / 'ablation.md'}", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
