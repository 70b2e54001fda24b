"""Pretraining: a killed run resumes to the uninterrupted run's losses; other data trains too."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, TINY_DATA, run_script
from ugen.model import read_meta


def losses(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows}


@pytest.mark.slow
def test_killed_run_resumes_with_the_same_losses(tiny_run, tmp_path):
    common = ["--vq", str(tiny_run / "vq"), "--text-tokenizer", str(tiny_run / "text" / "text.model"),
              "--steps", "40", "--batch-size", "8", "--warmup", "4", "--text-only-steps", "3",
              "--vocab-full-at", "0.5", "--checkpoint-every", "8", "--eval-every", "1000", *TINY_DATA, "--wandb", "disabled"]
    run_script("train/pretrain.py", "--run-dir", str(tmp_path / "full"), *common)

    killed = tmp_path / "killed"
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen([sys.executable, "train/pretrain.py", "--run-dir", str(killed), *common], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = killed / "checkpoints" / "step-0000008"
    while not checkpoint.exists() and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted = losses(killed)
    assert max(interrupted) < 40, "the kill came after the end"

    run_script("train/pretrain.py", "--run-dir", str(killed), *common, "--resume")
    expected, resumed = losses(tmp_path / "full"), losses(killed)
    assert sorted(resumed) == list(range(1, 41))
    assert resumed == expected  # bit-for-bit on CPU: same data order, schedule state, optimizer and RNG
    assert (killed / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_pretrain_on_an_imagefolder(tiny_run, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (40 + i, 56, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "caption": f"noise picture {i % 5}"})
    (folder / "broken.png").write_bytes(b"not a png")
    rows.append({"file_name": "broken.png", "caption": "broken"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    data = ["--data", str(folder), "--text-column", "caption"]
    run_script("tokenizers/train_text.py", "--out", str(tmp_path / "text"), "--vocab-size", "300", *data)
    result = run_script("train/pretrain.py", "--run-dir", str(tmp_path / "run"), "--vq", str(tiny_run / "vq"),
                        "--text-tokenizer", str(tmp_path / "text" / "text.model"), "--steps", "4", "--batch-size", "4",
                        "--text-only-steps", "1", "--eval-every", "2", "--wandb", "disabled", *data)
    assert "skipped 1 unreadable rows" in result.stderr or "skipped 1 unreadable rows" in result.stdout
    assert (tmp_path / "run" / "model" / "ugen.json").is_file()


def test_max_minutes_counts_from_started_at_and_still_writes_a_model(tiny_run, tmp_path):
    """`make pretrain` passes its own start, so time the tokenizers took counts against the budget."""
    result = run_script("train/pretrain.py", "--run-dir", str(tmp_path), "--vq", str(tiny_run / "vq"),
                        "--text-tokenizer", str(tiny_run / "text" / "text.model"), "--steps", "50", "--text-only-steps", "3",
                        "--batch-size", "8", *TINY_DATA, "--wandb", "disabled", "--max-minutes", "1", "--started-at", str(time.time() - 61))
    assert "--max-minutes reached at step 0" in result.stderr
    assert read_meta(tmp_path / "model")["step"] == 0


def test_bad_arguments_exit_2_with_one_line(tmp_path):
    result = run_script("train/pretrain.py", "--run-dir", str(tmp_path), "--wandb", "disabled", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    bad_mix = run_script("train/pretrain.py", "--run-dir", str(tmp_path), "--mix", "poetry=1", check=False)
    assert bad_mix.returncode == 2 and "--mix" in bad_mix.stderr
    short = run_script("train/pretrain.py", "--run-dir", str(tmp_path), "--steps", "50", check=False)  # 60 text-only steps
    assert short.returncode == 2 and "--text-only-steps 60" in short.stderr and "Traceback" not in short.stderr
