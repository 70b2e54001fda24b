"""Write the fixed GenEval-style prompt set for the Shapes world.

    python eval/make_prompts.py            # -> eval/prompts/geneval.json

The file is committed; rerunning with the defaults reproduces it exactly (see ugen/geneval.py for
the tasks and how each is judged).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ugen.geneval import make_prompts, save_prompts

DEFAULT_OUT = Path(__file__).resolve().parent / "prompts" / "geneval.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-task", type=int, default=60)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    prompts = make_prompts(args.seed, args.per_task)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_prompts(prompts, args.out)
    print(f"{sum(map(len, prompts.values()))} prompts in {len(prompts)} tasks -> {args.out}")


if __name__ == "__main__":
    main()
