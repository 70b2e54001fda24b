"""Data-parallel training on the CPU (torchrun, gloo): two processes train like one on the same
global batch, with DDP and gradient accumulation, or with FSDP2, whose sharded checkpoint one
process resumes."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_DATA, run_script


def logged(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_training(reference, other, steps):
    rows = {r["step"]: r for r in logged(reference)}
    other_rows = {r["step"]: r for r in logged(other)}
    assert sorted(other_rows) == list(range(1, 7))
    for step in steps:
        a, b = rows[step], other_rows[step]
        for key in ("train/loss", "grad_norm", *[k for k in a if k.startswith("val/")]):
            assert b[key] == pytest.approx(a[key], rel=1e-4), (step, key)
    first = load_file(reference / "model" / "model.safetensors")
    second = load_file(other / "model" / "model.safetensors")
    assert first.keys() == second.keys()
    for name in first:
        # atol 1e-4 (a twentieth of the learning rate): Adam divides each gradient by its own
        # running scale, so an element whose gradient is near zero (an output row of a rare image
        # id) turns the float noise of another reduction order into a visible step (3e-5 seen).
        torch.testing.assert_close(second[name], first[name], rtol=1e-4, atol=1e-4, msg=name)


@pytest.fixture(scope="module")
def common(tiny_run):
    return ["--vq", str(tiny_run / "vq"), "--text-tokenizer", str(tiny_run / "text" / "text.model"), *TINY_DATA,
            "--steps", "6", "--batch-tokens", "512", "--warmup", "2", "--text-only-steps", "2", "--vocab-full-at", "0.5",
            "--eval-every", "3", "--checkpoint-every", "3", "--log-every", "1", "--wandb", "disabled",
            # The claim is equal arithmetic: bf16 rounds differently as the batch is split; and FSDP,
            # compared with the same one-process run, shards AdamW (Muon needs whole matrices).
            "--precision", "fp32", "--optimizer", "adamw"]


@pytest.fixture(scope="module")
def one_process(common, tmp_path_factory):
    """The reference: one process, the 4 sequences of each step in one pass."""
    run = tmp_path_factory.mktemp("one")
    run_script("train/pretrain.py", "--run-dir", str(run), *common)
    assert any(k.startswith("val/") for k in logged(run)[2]), "validation ran at step 3"
    return run


@pytest.mark.slow
def test_two_ddp_processes_with_accumulation_match_one(common, one_process, tmp_path):
    # 2 sequences per process, one at a time: DDP's averaging and the accumulation both at work
    two = run_script("train/pretrain.py", "--run-dir", str(tmp_path), *common, "--micro-batch", "1", processes=2)
    assert "2 micro-batch(es) of 1 on each of 2 process(es)" in two.stderr
    assert_same_training(one_process, tmp_path, steps=range(1, 7))


@pytest.mark.slow
def test_fsdp_matches_one_process_and_its_checkpoint_resumes_on_another_count(common, one_process, tmp_path):
    sharded = tmp_path / "fsdp"
    run_script("train/pretrain.py", "--run-dir", str(sharded), *common, "--fsdp", processes=2)
    assert_same_training(one_process, sharded, steps=range(1, 7))
    checkpoint = sharded / "checkpoints" / "step-0000003"
    assert (checkpoint / "dcp" / ".metadata").is_file() and not (checkpoint / "model.safetensors").exists()

    # the 2-process checkpoint of step 3, resumed by one process, continues the same run
    resumed = tmp_path / "resumed"
    shutil.copytree(checkpoint, resumed / "checkpoints" / checkpoint.name)
    shutil.copy(sharded / "metrics.jsonl", resumed / "metrics.jsonl")
    result = run_script("train/pretrain.py", "--run-dir", str(resumed), *common, "--fsdp", "--resume")
    assert "resuming from" in result.stderr and "step 3" in result.stderr
    assert_same_training(one_process, resumed, steps=range(4, 7))
