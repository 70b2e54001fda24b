"""Data-parallel training: two processes (torchrun, gloo on the CPU) train like one on the same
global batch, with gradient accumulation in the mix."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_DATA, run_script


def logged(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_match_one_on_the_same_global_batch(tiny_run, tmp_path):
    common = ["--vq", str(tiny_run / "vq"), "--text-tokenizer", str(tiny_run / "text" / "text.model"), *TINY_DATA,
              "--steps", "6", "--batch-tokens", "512", "--warmup", "2", "--text-only-steps", "2", "--vocab-full-at", "0.5",
              "--eval-every", "3", "--log-every", "1", "--wandb", "disabled"]
    run_script("train/pretrain.py", "--run-dir", str(tmp_path / "one"), *common)  # 4 sequences in one pass
    # 2 sequences per process, one at a time: DDP's averaging and the accumulation both at work
    two = run_script("train/pretrain.py", "--run-dir", str(tmp_path / "two"), *common, "--micro-batch", "1", processes=2)
    assert "2 micro-batch(es) of 1 on each of 2 process(es)" in two.stderr

    one_rows, two_rows = logged(tmp_path / "one"), logged(tmp_path / "two")
    assert [r["step"] for r in one_rows] == [r["step"] for r in two_rows] == list(range(1, 7))
    for a, b in zip(one_rows, two_rows):
        for key in ("train/loss", "grad_norm", *[k for k in a if k.startswith("val/")]):
            assert b[key] == pytest.approx(a[key], rel=1e-4), (a["step"], key)
    assert any(k.startswith("val/") for k in two_rows[2]), "validation ran at step 3"

    first = load_file(tmp_path / "one" / "model" / "model.safetensors")
    second = load_file(tmp_path / "two" / "model" / "model.safetensors")
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(second[name], first[name], rtol=1e-4, atol=1e-5, msg=name)
