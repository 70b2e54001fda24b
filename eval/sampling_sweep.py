"""Choose generation's sampling defaults on validation prompts: GenEval-style scores over a grid of
temperatures, guidance scales and top-k.

    python eval/sampling_sweep.py --model runs/default/model --temperatures 0.7,1.0 --cfgs 1.5,3,5

The prompts are `ugen.geneval.make_prompts(seed=1)`, drawn afresh rather than read from the eval's
prompt file (seed 0), and the images come from sampling seed 1, which the reported eval does not
use: a setting chosen here is not chosen on the test. Prints a Markdown table (overall, and each
task for the best setting) and writes every score to OUT (default MODEL/../sampling_sweep.json).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from evaluate import SPLIT_SEEDS, generation  # eval/ holds scripts: this one's directory is on sys.path

from ugen import geneval, load
from ugen.api import GENERATE_DEFAULTS
from ugen.errors import UserError
from ugen.model import read_meta
from ugen.runtime import pick_device, run_main, seed_everything, write_json
from ugen.sampling import SamplingParams


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated numbers, not {text!r}") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/default/model", help="model directory")
    parser.add_argument("--temperatures", default="0.7,1.0", help="comma-separated sampling temperatures")
    parser.add_argument("--cfgs", default="1.5,3.0", help="comma-separated guidance scales")
    parser.add_argument("--top-ks", default="0", help="comma-separated top-k (0: all)")
    parser.add_argument("--plan-temperatures", default=None,
                        help="comma-separated temperatures of the plan (a model pretrained with --plan; default: "
                             "generate's)")
    parser.add_argument("--prompts-per-task", type=int, default=20, help="validation prompts of each GenEval task")
    parser.add_argument("--images-per-prompt", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1, help="sampling seed (the eval's is 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--out", default=None, help="JSON of every score (default MODEL/../sampling_sweep.json)")
    args = parser.parse_args(argv)
    temperatures, cfgs = _floats(args.temperatures, "--temperatures"), _floats(args.cfgs, "--cfgs")
    top_ks = [int(k) for k in _floats(args.top_ks, "--top-ks")]
    plan_temperatures = (_floats(args.plan_temperatures, "--plan-temperatures") if args.plan_temperatures
                         else [GENERATE_DEFAULTS.plan_temperature])
    if args.prompts_per_task < 1 or args.images_per_prompt < 1:
        raise UserError("--prompts-per-task and --images-per-prompt must be >= 1")
    if read_meta(args.model).get("pretrain", {}).get("data", "shapes") != "shapes":
        raise UserError("the sweep scores GenEval-style Shapes prompts: it needs a Shapes model")
    seed_everything(args.seed)
    model = load(args.model, pick_device(args.device))
    prompts = geneval.make_prompts(seed=SPLIT_SEEDS["validation"], per_task=args.prompts_per_task)

    rows = []
    for temperature, cfg, top_k, plan in itertools.product(temperatures, cfgs, top_ks, plan_temperatures):
        params = SamplingParams(temperature=temperature, top_k=top_k, cfg=cfg, plan_temperature=plan)
        scores, _ = generation(model, prompts, args.images_per_prompt, params, args.seed)
        rows.append({"temperature": temperature, "cfg": cfg, "top_k": top_k, "plan_temperature": plan,
                     **{task: round(r["score"], 4) for task, r in scores.items()}})
        print(f"T {temperature:g}, CFG {cfg:g}, top-k {top_k}, plan T {plan:g}: overall {scores['overall']['score']:.3f}",
              flush=True)

    best = max(rows, key=lambda r: r["overall"])
    print("\n| T | CFG | top-k | plan T | overall |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        mark = "**" if r is best else ""
        print(f"| {r['temperature']:g} | {r['cfg']:g} | {r['top_k']} | {r['plan_temperature']:g} | {mark}{r['overall']:.3f}{mark} |")
    print("best: " + ", ".join(f"{t} {best[t]:.3f}" for t in (*geneval.TASKS, "single_object_exact")))
    out = Path(args.out or Path(args.model).parent / "sampling_sweep.json")
    write_json(out, {"model": str(args.model), "seed": args.seed, "prompts_per_task": args.prompts_per_task,
                     "images_per_prompt": args.images_per_prompt, "rows": rows})
    print(f"-> {out}")


if __name__ == "__main__":
    run_main(main)
