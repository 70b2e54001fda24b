"""A real image-caption data set ugen has never seen: scikit-learn's handwritten digits.

    make digits                                                     # all of the below, scikit-learn included
    pip install scikit-learn                                        # the package that ships the images
    python benchmarks/digits.py build --out runs/data/digits        # an imagefolder with metadata.jsonl
    make pretrain DATA=runs/data/digits IMAGE_SIZE=32 VQ_ARGS="--downsample 4"   # -> runs/digits/model
    python benchmarks/digits.py judge --model runs/digits/model     # scored by an independent classifier

The 1,797 scans of UCI's optical digits (8x8, 17 grey levels, 43 writers) ship inside scikit-learn.
`build` draws each as dark ink on white at 32 px (each scan pixel a 4x4 block) with a caption that
names the digit in one of several phrasings. `judge` scores a model trained on them on the held-out
test split that ugen carves out of the folder, by something other than ugen's own model:
- captions: the digit a caption names (its word or numeral) against the scan's label;
- generation: images drawn from "a handwritten <digit>" for every digit, read by a logistic
  regression that scikit-learn fits on the training split's 8x8 scans (its accuracy on the held-out
  real scans is reported beside it, the judge's own ceiling).
Appends the figures to benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PHRASINGS = (
    "a handwritten {word}",
    "the digit {word}, written by hand",
    "a scanned handwritten number {digit}",
    "the number {word} in pen on white paper",
)
SCALE = 4  # 8x8 scans drawn at 32 px
RESULTS = Path(__file__).with_name("results.jsonl")


def load_digits():
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        sys.exit("error: this benchmark needs scikit-learn (pip install scikit-learn)")
    return sklearn_digits()


def scan_to_image(scan: np.ndarray) -> np.ndarray:
    """(8, 8) ink levels 0..16 -> (32, 32, 3) uint8, dark ink on white."""
    grey = (255 - np.round(scan * (255 / 16))).astype(np.uint8)
    return np.repeat(np.repeat(grey, SCALE, 0), SCALE, 1)[..., None].repeat(3, axis=2)


def image_to_scan(image: np.ndarray) -> np.ndarray:
    """Any (H, W, 3) uint8 image -> (64,) ink levels in [0, 16], the judge's input: 8x8 block means."""
    grey = np.asarray(Image.fromarray(image).convert("L").resize((8, 8), Image.BOX), dtype=np.float64)
    return ((255 - grey) * (16 / 255)).ravel()


def caption_digit(text: str) -> int | None:
    """The one digit a caption names (word or numeral), or None for none or several."""
    found = {WORDS.index(w) for w in re.findall(r"[a-z]+", text.lower()) if w in WORDS}
    found |= {int(d) for d in re.findall(r"\d", text)}
    return found.pop() if len(found) == 1 else None


def build(out: Path) -> None:
    digits = load_digits()
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    rows = []
    for i, (scan, label) in enumerate(zip(digits.images, digits.target)):
        name = f"{i:04d}.png"
        Image.fromarray(scan_to_image(scan)).save(out / name)
        first, *others = rng.sample(PHRASINGS, 2)
        texts = [p.format(word=WORDS[label], digit=label) for p in (first, *others)]
        rows.append({"file_name": name, "text": texts, "label": int(label)})
    (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"digits: {len(rows)} images at {8 * SCALE} px with captions -> {out}")


def judge(model_dir: Path, data: str | None, images_per_digit: int, seed: int) -> dict:
    from sklearn.linear_model import LogisticRegression

    import ugen
    from ugen.data import load_examples

    started = time.monotonic()
    model = ugen.load(model_dir, "cpu")
    data = data or model.meta["pretrain"]["data"]
    split = {s: load_examples(data, s, image_size=model.image_size)[0] for s in ("train", "test")}
    labels = {s: np.array([caption_digit(e.caption) for e in exs]) for s, exs in split.items()}
    scans = {s: np.stack([image_to_scan(e.image) for e in exs]) for s, exs in split.items()}
    classifier = LogisticRegression(max_iter=2000).fit(scans["train"], labels["train"])
    judge_on_real = float((classifier.predict(scans["test"]) == labels["test"]).mean())

    captions = model.caption([e.image for e in split["test"]])
    caption_accuracy = float(np.mean([caption_digit(c) == y for c, y in zip(captions, labels["test"])]))

    prompts = [f"a handwritten {w}" for w in WORDS]
    codes = model.generate_codes(prompts, images_per_digit, seed=seed)
    drawn = model.decode_codes(codes)
    asked = np.repeat(np.arange(10), images_per_digit)
    read = classifier.predict(np.stack([image_to_scan(i) for i in drawn]))
    result = {
        "benchmark": "digits", "model": str(model_dir), "data": data, "seed": seed,
        "test_images": len(split["test"]), "caption_accuracy": round(caption_accuracy, 4),
        "generated_images": len(drawn), "generation_accuracy": round(float((read == asked).mean()), 4),
        "generation_accuracy_by_digit": [round(float((read[asked == d] == d).mean()), 3) for d in range(10)],
        "judge_accuracy_on_real_test_scans": round(judge_on_real, 4),
        "device": f"{platform.machine()} CPU", "seconds": round(time.monotonic() - started, 1),
    }
    grid = np.concatenate([np.concatenate(list(drawn[d * images_per_digit:(d + 1) * images_per_digit]), axis=1)
                           for d in range(10)], axis=0)
    Image.fromarray(grid).save(model_dir.parent / "digits-generated.png")
    with RESULTS.open("a") as f:
        f.write(json.dumps(result) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("build", help="write the digits as an imagefolder with metadata.jsonl")
    sub.add_argument("--out", default="runs/data/digits", help="folder to write")
    sub = commands.add_parser("judge", help="score a model trained on the digits with an independent classifier")
    sub.add_argument("--model", default="runs/digits/model", help="model directory")
    sub.add_argument("--data", default=None, help="the digits folder (default: the model's training data)")
    sub.add_argument("--images-per-digit", type=int, default=20, help="images drawn per digit")
    sub.add_argument("--seed", type=int, default=0, help="sampling seed")
    args = parser.parse_args()
    if args.command == "build":
        build(Path(args.out))
    else:
        print(json.dumps(judge(Path(args.model), args.data, args.images_per_digit, args.seed), indent=2))


if __name__ == "__main__":
    main()
