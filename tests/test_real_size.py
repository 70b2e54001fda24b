"""Every stage at a real image size: 128 px Shapes through a factor-16 VQ tokenizer (8x8 codes).

Nothing may assume the 48 px Shapes default: the tokenizer's size and grid flow into pretraining,
sampling, the CLI, the eval and RL.
"""

import json

import numpy as np
import pytest

import ugen
from conftest import run_script
from ugen.shapes import make_examples

DATA = ["--num-train", "120", "--num-val", "20"]


@pytest.mark.slow
def test_every_stage_at_128_px(tmp_path):
    run = tmp_path / "run"
    vq = run_script("tokenizers/train_vq.py", "--out", str(run / "vq"), "--image-size", "128", "--downsample", "16",
                    "--steps", "3", "--batch-size", "4", *DATA, "--wandb", "disabled")
    assert "vq:" in vq.stdout
    assert json.loads((run / "vq" / "vq.json").read_text())["channels"] == [24, 48, 96, 192]  # Shapes: 24, doubling
    run_script("tokenizers/train_text.py", "--out", str(run / "text"), *DATA)
    run_script("train/pretrain.py", "--run-dir", str(run), "--steps", "3", "--batch-tokens", "256", "--warmup", "1",
               "--text-only-steps", "1", "--eval-every", "3", *DATA, "--wandb", "disabled")

    model = ugen.load(run / "model", "cpu")
    assert model.image_size == 128 and model.image_len == 64 and model.meta["grid"] == 8
    assert model.meta["max_len"] == 64 + 92  # the default row length follows the grid
    scene = make_examples("test", 1, image_size=128)[0].image
    assert isinstance(model.caption([scene])[0], str)
    images = model.generate("a red circle", num=2)
    assert [i.size for i in images] == [(128, 128)] * 2

    out = tmp_path / "drawn.png"
    run_script("ugen/cli.py", "generate", "--model", str(run / "model"), "--prompt", "a blue square", "--out", str(out))
    from PIL import Image

    assert Image.open(out).size == (128, 128)

    run_script("eval/evaluate.py", "--model", str(run / "model"), "--num-test", "8", "--num-reconstruct", "4",
               "--prompts-per-task", "2", "--images-per-prompt", "1", "--out", str(tmp_path / "eval"))
    results = json.loads((tmp_path / "eval" / "results.json").read_text())["results"]
    assert results["reconstruction"]["object_f1"]["n"] == 4 and results["tokenizer"]["psnr_db"]["n"] == 8
    grid = np.asarray(Image.open(tmp_path / "eval" / "samples-colors.png"))
    assert grid.shape[0] == 128 * 3  # report pictures at the model's size (3x upscale)

    rl = run_script("train/rl.py", "--model", str(run / "model"), "--out", str(tmp_path / "model-rl"), "--steps", "1",
                    "--images-per-step", "2", "--group-size", "2", "--probe-images", "2", *DATA, "--wandb", "disabled")
    assert "stage1 reward" in rl.stdout
    assert ugen.load(tmp_path / "model-rl", "cpu").image_size == 128
