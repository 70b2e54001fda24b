"""`train/rl.py` end to end on the tiny model: both stages, a model directory out, resume, bad input."""

import json
import sys

import pytest

import ugen
from conftest import ROOT, TINY_DATA, run_in_process, run_script
from ugen import shapes
from ugen.rewards import build_reward

sys.path.insert(0, str(ROOT / "train"))
from rl import probe  # noqa: E402 - train/ is a folder of scripts, not a package

SMALL = ["--images-per-step", "2", "--group-size", "2", "--probe-images", "2", *TINY_DATA, "--wandb", "disabled"]


def metrics_rows(run_dir):
    """(training rows, held-out probe rows) of an RL run's metrics.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "stage" in r], [r for r in rows if "stage" not in r]


def test_two_step_rl_run_alternates_stages_and_writes_a_model(tiny_model_dir, tmp_path):
    out = tmp_path / "model-rl"
    result = run_script("train/rl.py", "--model", str(tiny_model_dir), "--out", str(out), "--steps", "2",
                        "--sample-every", "1", "--short-captions", "1", *SMALL)
    assert "stage1 reward" in result.stdout and "stage2 reward" in result.stdout and "held-out reconstruction" in result.stdout
    rows, probes = metrics_rows(tmp_path / "rl")
    assert [r["stage"] for r in rows] == [1, 2]
    assert 0.0 <= rows[0]["stage1/reward"] <= 1.0 and 0.0 <= rows[1]["stage2/reward"] <= 1.0
    assert all(k in rows[0] for k in ("kl", "clip_fraction", "entropy", "caption_tokens", "flat_groups"))
    # every stage-2 image drawn from its short caption, and the stage's reward is that one's
    assert rows[1]["stage2/short_caption_reward"] == rows[1]["stage2/reward"]
    assert [r["step"] for r in probes] == [0, 2]  # before training and at its end
    assert all(0.0 <= r["probe/reconstruction"] <= 1.0 for r in probes)
    assert (tmp_path / "rl" / "samples" / "step-00002.png").is_file()
    model = ugen.load(out, "cpu")  # a complete model directory that serves like the one it started from
    assert model.meta["rl"]["steps"] == 2 and model.meta["vocab"] == ugen.load(tiny_model_dir, "cpu").meta["vocab"]
    assert len(model.caption([model.decode_codes(model.generate_codes(["a red circle"]))[0]])) == 1


def test_caption_weight_mixes_the_captions_f1_into_stage_one(tiny_model_dir, tmp_path):
    run_script("train/rl.py", "--model", str(tiny_model_dir), "--out", str(tmp_path / "model-rl"), "--steps", "1",
               "--stages", "1", "--caption-weight", "0.25", "--sample-every", "1", *SMALL)
    row = metrics_rows(tmp_path / "rl")[0][0]
    assert row["stage1/reward"] == pytest.approx(0.75 * row["stage1/reconstruction"] + 0.25 * row["stage1/caption_f1"])
    assert 0.0 <= row["stage1/caption_f1"] <= 1.0


def test_rl_resumes_from_its_checkpoint(tiny_model_dir, tmp_path):
    args = ["--model", str(tiny_model_dir), "--out", str(tmp_path / "model-rl"), "--stages", "2",
            "--checkpoint-every", "1", *SMALL]
    run_script("train/rl.py", *args, "--steps", "1")
    resumed = run_script("train/rl.py", *args, "--steps", "2", "--resume")
    assert "resuming from" in resumed.stderr and "at step 1" in resumed.stderr
    rows, probes = metrics_rows(tmp_path / "rl")
    assert [r["step"] for r in rows] == [1, 2] and [r["step"] for r in probes] == [0, 1, 2]
    assert all(list(r) == ["step", "probe/reconstruction"] for r in probes)


def test_bad_rl_arguments_are_one_line_errors(tiny_model_dir, tmp_path, capsys):
    for extra, message in [(["--reward", "bleu"], "unknown reward"), (["--group-size", "1"], "--group-size"),
                           (["--reward", "hf_cosine"], "--reward-model"), (["--short-captions", "1.5"], "--short-captions"),
                           (["--caption-weight", "-0.1"], "--caption-weight")]:
        result = run_in_process(capsys, "train/rl.py", "--model", str(tiny_model_dir), "--out", str(tmp_path / "x"), *extra)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    missing = run_in_process(capsys, "train/rl.py", "--model", str(tmp_path / "none"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_held_out_probe_is_deterministic(tiny_model_dir):
    """The probe's change between steps must be the model's, not the draw's: same model, same score."""
    policy = ugen.load(tiny_model_dir, "cpu")
    examples = shapes.make_examples("validation", 6, seed=0, image_size=policy.image_tokenizer.config.image_size)
    codes = policy.image_codes([e.image for e in examples])
    reward = build_reward("object_f1=0.5,ssim=0.5", policy.image_tokenizer, None, "cpu")
    first, second = (probe(policy, examples, codes, reward)["probe/reconstruction"] for _ in range(2))
    assert first == second and 0.0 <= first <= 1.0
