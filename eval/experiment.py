"""One row of the experiment log: train a candidate recipe, score it on validation only, log it.

    python eval/experiment.py --name muon --change "Muon on hidden matrices" --seeds 0 1 2 -- --optimizer muon
    python eval/experiment.py --name baseline --change "the default recipe" --seeds 0

Everything after `--` goes to train/pretrain.py. Every candidate trains on one pair of tokenizers
(`--base`, default runs/default: its `vq/` and `text/text.model`, built there by `make vq
text-tokenizer` when missing) and shares its code cache, unless the flags name their own `--vq` or
`--text-tokenizer`. A run is `runs/experiments/NAME-seedS` (training seed S, also the sampling seed
of its evaluation); its training is resumed and a finished evaluation is skipped, so a killed
experiment continues where it stopped.

Scoring is on the validation split alone (`eval/evaluate.py --split validation`: other scenes,
GenEval prompts drawn from another seed, other PIL-drawn shapes), so the test split is only read
by `make eval` to report a recipe already chosen. Each seed's row (validation losses per task at
the end of training, GenEval overall and per task, caption F1, PIL-drawn single shapes, VQA,
text-only QA, training minutes) is appended to `benchmarks/experiments.md` with its command; the
"kept" column is for the person who reads it, to fill in with why.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

from ugen.errors import UserError
from ugen.geneval import TASKS as GENEVAL_TASKS
from ugen.runtime import run_logged, run_main, write_json

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LOG = REPO / "benchmarks" / "experiments.md"
VAL_LOSSES = ("t2i", "caption", "vqa", "text_qa")


def train_and_score(run: Path, seed: int, base: Path, pretrain_args: list[str], threads: int) -> dict:
    """Train (resuming) and evaluate one seed; returns its figures, also kept in RUN/experiment.json."""
    model = run / "model"
    if not (model / "ugen.json").is_file():
        shared = [] if "--vq" in pretrain_args else ["--vq", str(base / "vq")]
        if not {"--text-tokenizer", "--init-from"} & set(pretrain_args):
            shared += ["--text-tokenizer", str(base / "text" / "text.model")]
        run.mkdir(parents=True, exist_ok=True)
        if "--vq" not in pretrain_args and not (run / "cache").is_symlink():
            (base / "cache").mkdir(parents=True, exist_ok=True)
            # the cache is keyed by everything its contents depend on: safe to share between runs
            (run / "cache").symlink_to((base / "cache").resolve(), target_is_directory=True)
        began = time.monotonic()
        run_logged(["train/pretrain.py", "--run-dir", str(run), *shared, "--seed", str(seed), "--wandb", "disabled",
                    "--resume", *pretrain_args], run / "train.log", threads, cwd=REPO)
        write_json(run / "train_minutes.json", {"minutes": (time.monotonic() - began) / 60, "threads": threads})
    results = run / "eval-validation" / "results.json"
    if not results.is_file() or results.stat().st_mtime < (model / "ugen.json").stat().st_mtime:
        run_logged(["eval/evaluate.py", "--model", str(model), "--split", "validation", "--seed", str(seed)],
                   run / "eval.log", threads, cwd=REPO)
    figures = read_figures(run)
    write_json(run / "experiment.json", figures)
    return figures


def read_figures(run: Path) -> dict:
    """The row's figures from a finished run's metrics, timing and validation results."""
    last = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if any(key.startswith("val/") for key in row):
            last = row
    results = json.loads((run / "eval-validation" / "results.json").read_text())["results"]
    timing = json.loads((run / "train_minutes.json").read_text()) if (run / "train_minutes.json").is_file() else {}
    und = results["understanding"]
    return {
        "step": last.get("step"),
        "minutes": timing.get("minutes"), "threads": timing.get("threads"),
        "val_loss": {task: last.get(f"val/{task}") for task in VAL_LOSSES},
        "geneval": results["generation"]["overall"]["score"],
        "geneval_tasks": {task: results["generation"][task]["score"] for task in GENEVAL_TASKS},
        "caption_f1": und["caption_f1"]["score"],
        "pil_shapes": und["caption_single_object_pil"]["score"],
        "vqa": und["vqa"]["score"],
        "text_qa": results["text"]["qa"]["score"],
        "summary": results["summary"]["overall"]["score"],
    }


HEADER = ("| date | experiment | change | seed | steps | train min (threads) | val loss t2i / caption | GenEval "
          "(single, two, count, colors, position, color_attr) | caption F1 | PIL shapes | VQA | text QA | kept |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")


def row(name: str, change: str, seed: int, f: dict) -> str:
    def num(value, digits=3):
        return "–" if value is None else f"{value:.{digits}f}"

    tasks = ", ".join(f"{f['geneval_tasks'][t]:.2f}" for t in GENEVAL_TASKS)
    minutes = f"{num(f['minutes'], 1)} ({f['threads']})" if f["minutes"] is not None else "–"
    losses = f"{num(f['val_loss']['t2i'])} / {num(f['val_loss']['caption'])}"
    return (f"| {date.today()} | {name} | {change} | {seed} | {f['step']} | {minutes} | {losses} | **{f['geneval']:.3f}** "
            f"({tasks}) | {f['caption_f1']:.3f} | {f['pil_shapes']:.3f} | {f['vqa']:.3f} | {f['text_qa']:.3f} | ? |\n")


def append_rows(rows: list[str]) -> None:
    """Append to the log's last table, or start a table when the log ends in prose."""
    text = LOG.read_text() if LOG.is_file() else "# Experiments\n\n"
    if not text.rstrip().endswith("|"):
        text = text.rstrip() + "\n\n" + HEADER
    text = text.rstrip("\n") + "\n" + "".join(rows)
    LOG.write_text(text)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ours, pretrain_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="the experiment's name: runs/experiments/NAME-seedS")
    parser.add_argument("--change", required=True, help="what it changes against the baseline, for the log")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training (and sampling) seeds")
    parser.add_argument("--base", default="runs/default", help="the run whose tokenizers and code cache every candidate shares")
    parser.add_argument("--root", default="runs/experiments", help="where the runs go")
    parser.add_argument("--jobs", type=int, default=1, help="seeds at once, the CPU threads split between them")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of each run (default: the CPU's split between --jobs); 1 to run two "
                             "experiments side by side on a 2-core CPU")
    parser.add_argument("--no-log", action="store_true", help="print the rows without appending them to the log")
    args = parser.parse_args(ours)
    if any(c in args.name for c in "/ ") or not args.name:
        raise UserError(f"--name {args.name!r}: one word, no slashes")
    base = Path(args.base)
    for needed, target in ((base / "vq" / "vq.safetensors", "vq"), (base / "text" / "text.model", "text-tokenizer")):
        if not needed.is_file():
            raise UserError(f"{needed} is missing: build the shared tokenizers first (make {target} RUN={base})")

    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    runs = {seed: Path(args.root) / f"{args.name}-seed{seed}" for seed in args.seeds}
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {seed: pool.submit(train_and_score, run, seed, base, pretrain_args, threads) for seed, run in runs.items()}
        figures = {seed: future.result() for seed, future in futures.items()}
    change = args.change + (f" (`{shlex.join(pretrain_args)}`)" if pretrain_args else "")
    rows = [row(args.name, change, seed, f) for seed, f in figures.items()]
    command = shlex.join(["python", "eval/experiment.py", *argv])
    print(f"`{command}`\n" + HEADER + "".join(rows))
    if not args.no_log:
        append_rows(rows)


if __name__ == "__main__":
    run_main(main)
