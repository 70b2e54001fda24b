"""Data of any size: a local parquet set of N images taken through every stage in bounded memory.

    python benchmarks/data_scale.py --rows 100000          # about 15 minutes on a 2-core CPU

Writes N rows (64 px PNG bytes of Shapes scenes at random, their long captions) as parquet under
--work, then runs, each as its own process under `/usr/bin/time -v`: the VQ tokenizer's training
(random-access batches), the text tokenizer's (captions only), and 50 pretraining steps, which
first encode every train and validation image into the code cache in chunks. Reports each stage's
peak resident memory and the encode throughput in images/s (from the cache's meta.json), and
appends them to benchmarks/results.jsonl. The goal: every peak under 3 GB whatever N is.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results.jsonl")
IMAGE_SIZE = 64


def build(out: Path, rows: int, seed: int) -> Path:
    """A parquet file of `rows` scenes, written through `datasets` from a generator (bounded memory)."""
    import datasets
    from PIL import Image

    from ugen import shapes

    path = out / f"rows-{rows}.parquet"
    if path.is_file():
        return path

    def generate():
        rng = random.Random(seed)
        for _ in range(rows):
            scene = shapes.sample_scene(rng)
            png = io.BytesIO()
            Image.fromarray(shapes.render(scene, IMAGE_SIZE)).save(png, format="PNG")
            yield {"image": {"bytes": png.getvalue(), "path": None}, "caption": shapes.long_caption(scene)}

    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    table = datasets.Dataset.from_generator(generate, features=features, cache_dir=str(out / "hf-build"))
    tmp = path.with_suffix(".tmp")
    table.to_parquet(str(tmp))
    tmp.replace(path)
    return path


def timed(name: str, command: list[str], log: Path) -> dict[str, float]:
    """Run a stage under /usr/bin/time -v; its peak RSS (MB) and wall seconds."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    began = time.monotonic()
    with open(log, "w") as out:
        done = subprocess.run(["/usr/bin/time", "-v", sys.executable, *command], cwd=ROOT, env=env, stdout=out,
                              stderr=subprocess.STDOUT)
    text = log.read_text()
    if done.returncode:
        sys.exit(f"error: {name} failed ({done.returncode}); see {log}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    print(f"{name}: peak {peak_kb / 1024:,.0f} MB, {time.monotonic() - began:.0f} s", file=sys.stderr)
    return {"peak_rss_mb": round(peak_kb / 1024), "seconds": round(time.monotonic() - began, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="images in the parquet set")
    parser.add_argument("--work", default="runs/data-scale", help="where the data, run and logs go")
    parser.add_argument("--vq-steps", type=int, default=300, help="VQ tokenizer steps (memory, not quality, is measured)")
    parser.add_argument("--steps", type=int, default=50, help="pretraining steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not Path("/usr/bin/time").is_file():
        sys.exit("error: /usr/bin/time is missing (Debian package `time`)")
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    data = build(work, args.rows, args.seed)
    build_seconds = time.monotonic() - began
    print(f"data: {data} ({data.stat().st_size / 2**20:,.0f} MB) in {build_seconds:.0f} s", file=sys.stderr)

    run = work / f"run-{args.rows}"
    common = ["--data", str(data), "--text-column", "caption", "--image-size", str(IMAGE_SIZE), "--seed", str(args.seed)]
    stages = {
        "train_vq": timed("train_vq", ["tokenizers/train_vq.py", "--out", str(run / "vq"), "--steps", str(args.vq_steps),
                                       "--wandb", "disabled", *common], work / "train_vq.log"),
        "train_text": timed("train_text", ["tokenizers/train_text.py", "--out", str(run / "text"), *common],
                            work / "train_text.log"),
        "encode_and_pretrain": timed("encode + pretrain", [
            "train/pretrain.py", "--run-dir", str(run), "--steps", str(args.steps), "--text-only-steps", str(args.steps // 5),
            "--eval-every", str(args.steps), "--overwrite", "--wandb", "disabled", *common], work / "pretrain.log"),
    }
    caches = [json.loads(p.read_text()) for p in sorted((run / "cache").glob("*/meta.json"))]
    train = next(c for c in caches if c["identity"]["split"] == "train")
    result = {
        "benchmark": "data_scale", "rows": args.rows, "image_size": IMAGE_SIZE, "device": f"cpu ({os.cpu_count()} cores)",
        "host": platform.node(), "date": time.strftime("%Y-%m-%d"),
        "encoded_train_images": train["rows"], "encode_images_per_s": train["images_per_s"],
        "encode_seconds": train["seconds"], "peak_rss_mb": {k: v["peak_rss_mb"] for k, v in stages.items()},
        "stage_seconds": {k: v["seconds"] for k, v in stages.items()}, "build_seconds": round(build_seconds, 1),
        "command": f"python benchmarks/data_scale.py --rows {args.rows}",
    }
    with open(RESULTS, "a") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
