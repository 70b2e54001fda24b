"""Pretraining: a killed run resumes to the uninterrupted run's losses; other data trains too."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, TINY_DATA, run_in_process, run_script
from ugen.errors import UserError
from ugen.model import read_meta
from ugen.training import load_checkpoint, save_checkpoint


def losses(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows}


@pytest.mark.slow
def test_killed_run_resumes_with_the_same_losses(tiny_run, tmp_path):
    common = ["--vq", str(tiny_run / "vq"), "--text-tokenizer", str(tiny_run / "text" / "text.model"),
              "--steps", "40", "--batch-tokens", "512", "--warmup", "4", "--text-only-steps", "3",
              "--vocab-full-at", "0.5", "--checkpoint-every", "8", "--log-every", "1", "--eval-every", "1000", *TINY_DATA, "--wandb", "disabled"]
    run_script("train/pretrain.py", "--run-dir", str(tmp_path / "full"), *common)

    killed = tmp_path / "killed"
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
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
                        "--text-tokenizer", str(tmp_path / "text" / "text.model"), "--steps", "4", "--batch-tokens", "256",
                        "--text-only-steps", "1", "--eval-every", "2", "--wandb", "disabled", *data)
    assert "train: skipped 1 rows (empty text or unreadable image)" in result.stderr
    model = tmp_path / "run" / "model"
    assert (model / "ugen.json").is_file()

    # The eval and RL read the model's own data and run what applies to data without scenes.
    evaluated = run_script("eval/evaluate.py", "--model", str(model), "--num-test", "10", "--out", str(tmp_path / "eval"))
    assert "has no Shapes scenes: skipping GenEval" in evaluated.stderr
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["data"] == str(folder)
    assert set(results["results"]) == {"understanding", "reconstruction", "text", "tokenizer"}
    assert set(results["results"]["understanding"]) == {"caption_bleu4", "caption_cider"}
    assert set(results["results"]["reconstruction"]) == {"ssim", "vq_feature_cosine", "overall"}
    assert "samples-test_captions.png" in (tmp_path / "eval" / "report.md").read_text()

    rl = ["train/rl.py", "--model", str(model), "--out", str(tmp_path / "model-rl"), "--steps", "1",
          "--images-per-step", "2", "--group-size", "2", "--probe-images", "2", "--wandb", "disabled"]
    shapes_reward = run_script(*rl, "--reward", "object_f1", check=False)
    assert shapes_reward.returncode == 2 and "scores Shapes scenes, and this data has none" in shapes_reward.stderr
    assert "Traceback" not in shapes_reward.stderr
    refined = run_script(*rl)
    assert "stage1 reward" in refined.stdout and (tmp_path / "model-rl" / "ugen.json").is_file()
    assert json.loads((tmp_path / "model-rl" / "ugen.json").read_text())["rl"]["reward"] == "ssim=0.5,vq_cosine=0.5"


def test_max_minutes_counts_from_started_at_and_still_writes_a_model(tiny_run, tmp_path):
    """`make pretrain` passes its own start, so time the tokenizers took counts against the budget."""
    result = run_script("train/pretrain.py", "--run-dir", str(tmp_path), "--vq", str(tiny_run / "vq"),
                        "--text-tokenizer", str(tiny_run / "text" / "text.model"), "--steps", "50", "--text-only-steps", "3",
                        "--batch-tokens", "512", *TINY_DATA, "--wandb", "disabled", "--max-minutes", "1", "--started-at", str(time.time() - 61))
    assert "--max-minutes reached at step 0" in result.stderr
    assert read_meta(tmp_path / "model")["step"] == 0


def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys):
    result = run_in_process(capsys, "train/pretrain.py", "--run-dir", str(tmp_path), "--wandb", "disabled")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    bad_mix = run_in_process(capsys, "train/pretrain.py", "--run-dir", str(tmp_path), "--mix", "poetry=1")
    assert bad_mix.returncode == 2 and "--mix" in bad_mix.stderr
    short = run_in_process(capsys, "train/pretrain.py", "--run-dir", str(tmp_path), "--steps", "50")  # 60 text-only steps
    assert short.returncode == 2 and "--text-only-steps 60" in short.stderr and "Traceback" not in short.stderr


def _pretrain(capsys, tiny_run, run_dir, *extra, check=True):
    result = run_in_process(capsys, "train/pretrain.py", "--run-dir", str(run_dir), "--vq", str(tiny_run / "vq"),
                            "--text-tokenizer", str(tiny_run / "text" / "text.model"), "--steps", "4", "--batch-tokens", "256",
                            "--warmup", "1", "--text-only-steps", "1", "--checkpoint-every", "2", "--eval-every", "100", "--log-every", "1",
                            *TINY_DATA, "--wandb", "disabled", *extra)
    assert not check or result.returncode == 0, result.stderr[-3000:]
    return result


def test_runs_cannot_mix(tiny_run, tmp_path, capsys):
    """A new run refuses an old run's directory; --resume refuses another run's checkpoint."""
    _pretrain(capsys, tiny_run, tmp_path)
    first = losses(tmp_path)
    again = _pretrain(capsys, tiny_run, tmp_path, check=False)
    assert again.returncode == 2 and "holds checkpoints of an earlier run" in again.stderr
    assert "--resume" in again.stderr and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    assert losses(tmp_path) == first  # nothing of the old run was touched

    for flags, named in [(["--steps", "6"], "steps 4 -> 6"), (["--vocab-order", "random"], "vocab_order"),
                         (["--preset", "small"], "preset 'tiny' -> 'small'")]:
        other = _pretrain(capsys, tiny_run, tmp_path, "--resume", *flags, check=False)
        assert other.returncode == 2 and named in other.stderr and "--overwrite" in other.stderr, other.stderr
        assert "Traceback" not in other.stderr
        assert len(other.stderr.strip().splitlines()) == 1
    both = _pretrain(capsys, tiny_run, tmp_path, "--resume", "--overwrite", check=False)
    assert both.returncode == 2 and "give one" in both.stderr

    # Flags that only steer this process may change: a resume with another --eval-every is accepted.
    resumed = _pretrain(capsys, tiny_run, tmp_path, "--resume", "--eval-every", "50")
    assert "resuming from" in resumed.stderr and losses(tmp_path) == first

    fresh = _pretrain(capsys, tiny_run, tmp_path, "--overwrite", "--seed", "1")
    assert "resuming" not in fresh.stderr and sorted(losses(tmp_path)) == [1, 2, 3, 4]
    assert losses(tmp_path) != first  # a new run (another seed), not the old one continued


def test_batch_flags_that_do_not_divide_are_one_line(tiny_run, tmp_path, capsys):
    for flags, named in [(["--micro-batch", "3"], "--micro-batch 3 must divide the 2 sequences"),
                         (["--batch-tokens", "100"], "--batch-tokens 100 makes 0 sequences of --max-len 128")]:
        result = _pretrain(capsys, tiny_run, tmp_path, *flags, check=False)
        assert result.returncode == 2 and named in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_resume_drops_a_torn_last_metrics_line(tiny_run, tmp_path, capsys):
    """A kill in the middle of a write leaves half a JSON line: resume drops it and redoes its step."""
    _pretrain(capsys, tiny_run, tmp_path, "--steps", "4")
    full = losses(tmp_path)
    checkpoints = sorted((tmp_path / "checkpoints").iterdir())
    import shutil

    shutil.rmtree(checkpoints[-1])  # as if killed after step 3's line, before the final checkpoint
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2])
    resumed = _pretrain(capsys, tiny_run, tmp_path, "--resume")
    assert "dropped a torn last line" in resumed.stderr
    assert losses(tmp_path) == full  # steps 3 and 4 redone from the step-2 checkpoint, exactly as before

    (tmp_path / "metrics.jsonl").write_text("not json\n" + (tmp_path / "metrics.jsonl").read_text())
    shutil.rmtree(sorted((tmp_path / "checkpoints").iterdir())[-1])
    broken = _pretrain(capsys, tiny_run, tmp_path, "--resume", check=False)
    assert broken.returncode == 2 and "line 1 is not JSON" in broken.stderr


def test_a_checkpoint_of_another_optimizer_layout_is_a_one_line_error(tmp_path):
    """A checkpoint whose optimizer has other parameter groups (the layout of an older ugen)
    cannot resume this run's optimizer: a UserError, not a traceback from torch."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    one_group = torch.optim.AdamW(model.parameters())
    path = save_checkpoint(tmp_path, 1, model, one_group, torch.optim.lr_scheduler.LambdaLR(one_group, lambda s: 1.0), {})
    load_checkpoint(path, model, one_group, torch.optim.lr_scheduler.LambdaLR(one_group, lambda s: 1.0))  # same layout: fine
    two_groups = torch.optim.AdamW([{"params": model[0].parameters()}, {"params": model[1].parameters()}])
    with pytest.raises(UserError, match="holds an optimizer of another layout"):
        load_checkpoint(path, model, two_groups, torch.optim.lr_scheduler.LambdaLR(two_groups, lambda s: 1.0))
