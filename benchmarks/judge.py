"""The Shapes judge on validation scenes: how often it reads objects right, and the measures its
thresholds cut (`ugen.shapes.judge`: `_is_object`, `_measure`), so that each threshold is chosen on data
that is neither trained on nor tested.

    python benchmarks/judge.py --vq runs/default/vq      # with VQ reconstructions
    python benchmarks/judge.py --scenes 300 --no-save

Kinds of image: clean renders of validation scenes; the same blurred (3×3 box) with noise (sigma
8), a stand-in for a decoder's soft edges; VQ reconstructions of them (with --vq); single shapes a
plain PIL script drew (eval/pil_shapes.py); and smears of palette colors (random blocks, blurred),
which hold no object. For each kind: the share of objects read right (shape, color, size, centre
within 3 px) and, for smears, the objects read at all. Then, over every measured blob that is a
true object (any kind) and every smear blob, the 1st / 99th percentiles of each measure a
threshold cuts, beside the threshold. Appends to benchmarks/results.jsonl unless --no-save.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ugen import shapes as S
from ugen.shapes import judge as J  # the thresholds under test are the judge's own private constants

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))
from pil_shapes import draw_single_shapes  # noqa: E402  (eval/ holds scripts, not a package)
from speed import report  # noqa: E402  (benchmarks/ is the script's directory, first on sys.path)

THRESHOLDS = {  # measure: (threshold, which side an object lies on)
    "palette_distance": (J._MAX_PALETTE_DIST, "<="), "spread": (J._MAX_COLOR_SPREAD, "<="),
    "overlap": (J._MIN_TEMPLATE_IOU, ">="),
}


def degrade(image: np.ndarray, rng: np.random.Generator, sigma: float = 8.0) -> np.ndarray:
    """A 3×3 box blur then Gaussian noise: a stand-in for a decoder's soft edges (tests use it too)."""
    x = image.astype(np.float32)
    h, w, _ = x.shape
    padded = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
    x = sum(padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)) / 9
    return np.clip(np.round(x + rng.normal(0.0, sigma, x.shape)), 0, 255).astype(np.uint8)


def smears(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Blurred blocks of palette colors mixed with the background, a clear border kept: what decoded
    random codes look like, and no object."""
    palette = np.array(list(S.COLORS.values()), dtype=np.float32)
    out = []
    for _ in range(n):
        mix = rng.random((12, 12, 1))
        smear = (palette[rng.integers(0, 8, (12, 12))] * mix + np.array(S.BACKGROUND) * (1 - mix)).repeat(4, 0).repeat(4, 1)
        smear[:2], smear[-2:], smear[:, :2], smear[:, -2:] = S.BACKGROUND, S.BACKGROUND, S.BACKGROUND, S.BACKGROUND
        padded = np.pad(smear, ((1, 1), (1, 1), (0, 0)), mode="edge")
        out.append((sum(padded[dy:dy + 48, dx:dx + 48] for dy in range(3) for dx in range(3)) / 9).astype(np.uint8))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=500, help="validation scenes")
    parser.add_argument("--vq", default=None, help="a VQ tokenizer directory: also judge its reconstructions")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    start = time.monotonic()
    examples = S.make_examples("validation", args.scenes)
    rng = np.random.default_rng(0)
    kinds = {"clean": [e.image for e in examples], "blurred": [degrade(e.image, rng) for e in examples]}
    if args.vq:
        from ugen.image_tokenizers import load_image_tokenizer, to_tensor, to_uint8

        tokenizer = load_image_tokenizer(args.vq, device="cpu")
        with torch.no_grad():
            kinds["vq"] = list(to_uint8(tokenizer.decode(tokenizer.encode(to_tensor(np.stack(kinds["clean"]))))))
    true_blobs, smear_blobs, accuracy = [], [], {}
    for kind, images in kinds.items():
        right = total = 0
        for image, example in zip(images, examples):
            truth = example.scene.objects
            found = S.parse(image)
            right += S.match_count(found, truth)
            total += len(truth)
            for m in S.measure(image):  # the blobs at a true object's place, whatever the thresholds say
                at = [o for o in truth if math.dist((m.x, m.y), (o.x, o.y)) <= S.MATCH_DISTANCE]
                if at:
                    true_blobs.append((kind, m, at[0].shape))
        accuracy[kind] = round(right / total, 4)
    drawn = draw_single_shapes(args.scenes, seed=1)
    accuracy["pil"] = round(float(np.mean([[(o.shape, o.color) for o in S.parse(image)] == [(shape, color)]
                                           for image, shape, color in drawn])), 4)
    smeared = smears(100, rng)
    accuracy["smear_objects_read"] = sum(len(S.parse(image)) for image in smeared)
    for image in smeared:
        smear_blobs += S.measure(image)

    def percentiles(blobs, measure):
        values = [getattr(m, measure) for m in blobs]
        return [round(float(v), 3) for v in np.percentile(values, [1, 99])] if values else None

    measures = {name: {"threshold": t, "object_is": side,
                       **{kind: percentiles([m for k, m, _ in true_blobs if k == kind], name) for kind in kinds},
                       "smear": percentiles(smear_blobs, name)}
                for name, (t, side) in THRESHOLDS.items()}
    for shape in S.SHAPES:  # the shape measures, by the true shape of the blob
        of_shape = [m for _, m, truth in true_blobs if truth == shape]
        measures[f"skew_{shape}"] = {"threshold": J._TRIANGLE_SKEW, "all": percentiles(of_shape, "skew")}
        measures[f"corners_{shape}"] = {"threshold": J._SQUARE_CORNERS, "all": percentiles(of_shape, "corners")}
    result = {"benchmark": "judge", "scenes": args.scenes, "vq": args.vq, "objects_read_right": accuracy,
              "measures_p1_p99": measures, "seconds": round(time.monotonic() - start, 1),
              "date": time.strftime("%Y-%m-%d"), "command": " ".join(["python benchmarks/judge.py", *sys.argv[1:]])}
    report(result, save=not args.no_save, indent=1)


if __name__ == "__main__":
    main()
