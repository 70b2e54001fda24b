"""Compare two sets of evaluations (e.g. before and after RL, one results.json per seed).

    python eval/compare.py --before runs/default/eval-seed*/results.json \
                           --after runs/default/eval-model-rl/results.json runs/rl-seed*/eval-model-rl/results.json

Prints a markdown table: for each metric (CATEGORY.NAME of results.json) the mean ± sample std over
each set, and the change of the means.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ugen.errors import UserError
from ugen.metrics import mean_std
from ugen.runtime import run_main

DEFAULT_METRICS = [
    "reconstruction.overall", "reconstruction.object_f1", "reconstruction.named_f1", "reconstruction.ssim",
    "reconstruction.vq_feature_cosine",
    "generation.overall", "generation.single_object", "generation.two_object", "generation.counting",
    "generation.colors", "generation.position", "generation.color_attr",
    "understanding.perception", "understanding.vqa_small_color", "understanding.vqa_small_present",
    "understanding.vqa_color_at", "understanding.caption_f1", "understanding.vqa", "text.qa", "summary.overall",
]


def scores(paths: list[str], metric: str) -> list[float]:
    category, name = metric.split(".", 1)
    out = []
    for path in paths:
        try:
            out.append(json.loads(Path(path).read_text())["results"][category][name]["score"])
        except (OSError, json.JSONDecodeError) as err:
            raise UserError(f"{path}: cannot be read ({err})") from None
        except KeyError:
            raise UserError(f"{path}: no metric {metric}") from None
    return out


def cell(values: list[float]) -> str:
    return "{:.3f} ± {:.3f}".format(*mean_std(values))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", nargs="+", required=True, help="results.json files of the first set")
    parser.add_argument("--after", nargs="+", required=True, help="results.json files of the second set")
    parser.add_argument("--metrics", nargs="+", default=DEFAULT_METRICS, help="CATEGORY.NAME keys of results.json")
    args = parser.parse_args(argv)
    rows = [(m, scores(args.before, m), scores(args.after, m)) for m in args.metrics]  # all read before printing
    print(f"| metric | before ({len(args.before)}) | after ({len(args.after)}) | change |")
    print("| --- | --- | --- | --- |")
    for metric, before, after in rows:
        print(f"| {metric} | {cell(before)} | {cell(after)} | {np.mean(after) - np.mean(before):+.3f} |")


if __name__ == "__main__":
    run_main(main)
