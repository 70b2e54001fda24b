"""`make gpu-check`: every item of the CUDA path on one GPU in about five minutes, into
benchmarks/gpu-check.json with the device named. Run it first whenever a GPU is at hand.

    python benchmarks/gpu_check.py              # on a CUDA machine
    python benchmarks/gpu_check.py --dry-run    # anywhere: what it would check, and the commands

On a machine without CUDA it says so and makes the dry run. The checks, in order (each a real
run of ugen's own scripts or of its engine; a failed check is recorded and the rest still run):

- tokenizers: a Shapes VQ tokenizer (300 steps) and a text tokenizer, for the runs below;
- train_flash, train_sdpa: 60 bf16 training steps of the `small` preset under flash-attn and under
  SDPA (`UGEN_ATTENTION`), from the same seed: final losses within 5% of each other, tokens/s and
  MFU of each (MFU for GPUs in `ugen.runtime.PEAK_BF16_FLOPS`);
- packed_vs_unpacked: under flash-attn, the loss of packed rows flattened into one sequence (as
  training feeds them) against each row alone, in bf16;
- compiled_vs_eager: the compiled decode step (CUDA graphs) against eager on the same seeds: the
  share of drawn images whose codes are identical;
- fsdp_checkpoint: one-GPU FSDP (`torch.distributed.run --nproc_per_node 1 ... --fsdp`) for 40 steps with a
  checkpoint at 20 and 40, then resumed from it to 60;
- rl_two_steps: two Unified-GRPO steps on the flash-attn model (rollouts through the engine under
  autocast);
- pretrained_tokenizer: a JanusVQVAE of LlamaGen VQ-16's shape at 256 px (random weights): its codes
  on CUDA, under bf16 autocast and with TF32 on as training sets it, against the CPU's (the adapter
  runs fp32 without TF32), and the time to decode its 16,384 codes alone (`--image-init pixels`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "gpu-check.json"
PY = sys.executable
KERNELS = ("flash_attention_2", "sdpa")


@dataclass
class Check:
    name: str
    what: str
    commands: Callable[[Path], list[list[str]]]  # shell commands it runs (empty: it runs in this process)
    run: Callable[[Path, dict], dict]  # (the temporary directory, the results so far) -> its result


def _train(kernel: str) -> Callable[[Path], list[list[str]]]:
    def commands(tmp: Path) -> list[list[str]]:
        return [["env", f"UGEN_ATTENTION={kernel}", PY, "train/pretrain.py", "--run-dir", str(tmp / kernel),
                 "--vq", str(tmp / "vq"), "--text-tokenizer", str(tmp / "text" / "text.model"), "--preset", "small",
                 "--steps", "60", "--text-only-steps", "10", "--num-train", "2000", "--num-val", "64",
                 "--eval-every", "30", "--checkpoint-every", "1000", "--log-every", "10", "--device", "cuda",
                 "--wandb", "disabled", "--seed", "0"]]
    return commands


def _shell(commands: list[list[str]], timeout: float = 240) -> dict:
    """Run commands in turn from the repository root; stop at the first failure."""
    for command in commands:
        began = time.monotonic()
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return {"ok": False, "failed": shlex.join(command), "error": " | ".join(tail),
                    "seconds": round(time.monotonic() - began, 1)}
    return {"ok": True}


def _last_metrics(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    trained = [r for r in rows if "train/loss" in r]
    return trained[-1] if trained else {}


def run_tokenizers(tmp: Path, results: dict) -> dict:
    return _shell(tokenizer_commands(tmp))


def tokenizer_commands(tmp: Path) -> list[list[str]]:
    return [[PY, "tokenizers/train_vq.py", "--out", str(tmp / "vq"), "--steps", "300", "--device", "cuda", "--wandb", "disabled"],
            [PY, "tokenizers/train_text.py", "--out", str(tmp / "text"), "--wandb", "disabled"]]


def run_train(kernel: str) -> Callable[[Path, dict], dict]:
    def run(tmp: Path, results: dict) -> dict:
        from ugen.model import _flash_attn_problem

        if kernel == "flash_attention_2" and _flash_attn_problem() is not None:
            return {"ok": None, "skipped": f"flash-attn does not load: {_flash_attn_problem()}"}
        result = _shell(_train(kernel)(tmp))
        if result["ok"]:
            last = _last_metrics(tmp / kernel)
            result.update(loss=last.get("train/loss"), tokens_per_s=last.get("tokens_per_s"), mfu=last.get("mfu"))
            result["ok"] = result["loss"] is not None and math.isfinite(result["loss"])
        return result
    return run


def run_losses_agree(tmp: Path, results: dict) -> dict:
    losses = [results.get(f"train_{k.split('_')[0]}", {}).get("loss") for k in KERNELS]
    if None in losses:
        return {"ok": None, "skipped": "a training run did not finish"}
    flash, sdpa = losses
    return {"ok": abs(flash - sdpa) / sdpa < 0.05, "flash": flash, "sdpa": sdpa}


def _load(directory: Path, kernel: str):
    """A model directory on CUDA with the attention kernel named."""
    import ugen

    os.environ["UGEN_ATTENTION"] = kernel
    try:
        return ugen.load(directory, "cuda")
    finally:
        del os.environ["UGEN_ATTENTION"]


def run_packed(tmp: Path, results: dict) -> dict:
    import torch

    from ugen.model import masked_loss
    from ugen.sequences import pack, text_row

    if not (tmp / "flash_attention_2" / "model").is_dir():
        return {"ok": None, "skipped": "no flash-attn model (train_flash did not run)"}
    model = _load(tmp / "flash_attention_2" / "model", "flash_attention_2")
    v, lm = model.vocab, model.model.eval()
    rows = [text_row(v, model.text_ids(t, "text")) for t in
            ("a red circle", "two blue squares on the left", "a small green triangle", "three yellow circles", "a square")]
    bins = [rows[:2], rows[2:4], rows[4:]]

    def loss(batch) -> float:
        batch = {k: t.cuda() for k, t in batch.items()}
        with torch.no_grad():
            logits = lm(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        return float(masked_loss(logits.float(), batch["labels"], v, None, reduction="sum"))

    packed = pack(bins, 48, v.pad)
    flattened = loss({k: packed[k].reshape(1, -1) for k in ("input_ids", "position_ids", "labels")})
    alone = sum(loss(pack([[row]], len(row.ids), v.pad)) for row in rows)
    return {"ok": abs(flattened - alone) / abs(alone) < 2e-2, "flattened_sum": flattened, "rows_alone_sum": alone}


def run_compiled(tmp: Path, results: dict) -> dict:
    import numpy as np

    from ugen.api import trained_codes
    from ugen.sampling import Engine

    if not (tmp / "sdpa" / "model").is_dir():
        return {"ok": None, "skipped": "no SDPA model (train_sdpa did not run)"}
    model = _load(tmp / "sdpa" / "model", "sdpa")  # the compiled step wants SDPA's 4D mask
    prompts = ["a red circle", "two blue squares", "a green triangle left of a yellow circle", "three purple circles"]
    drawn = {}
    for compiled in (False, True, True):  # the second compiled call replays what the first compiled
        model.engine = Engine(model.model, model.vocab, model.image_tokenizer.grid, compile=compiled,
                              active_image=trained_codes(model.meta))
        began = time.monotonic()
        drawn[compiled] = model.generate_codes(prompts, num=4, seed=0)
        seconds = time.monotonic() - began
    same = float(np.mean(np.all(drawn[True] == drawn[False], axis=1)))
    return {"ok": same >= 0.95, "identical_images": same, "compiled_call_s": round(seconds, 2)}


def fsdp_commands(tmp: Path) -> list[list[str]]:
    # torchrun through this interpreter: the .venv's bin need not be on PATH
    base = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "train/pretrain.py", "--fsdp",
            "--run-dir", str(tmp / "fsdp"),
            "--vq", str(tmp / "vq"), "--text-tokenizer", str(tmp / "text" / "text.model"), "--preset", "small",
            "--text-only-steps", "10", "--num-train", "2000", "--num-val", "64", "--eval-every", "1000",
            "--checkpoint-every", "20", "--log-every", "10", "--device", "cuda", "--wandb", "disabled"]
    return [[*base, "--steps", "40"], [*base, "--steps", "60", "--resume"]]


def run_fsdp(tmp: Path, results: dict) -> dict:
    result = _shell(fsdp_commands(tmp))
    if result["ok"]:
        steps = [json.loads(line)["step"] for line in (tmp / "fsdp" / "metrics.jsonl").read_text().splitlines() if line.strip()]
        result.update(last_step=max(steps), ok=max(steps) == 60 and (tmp / "fsdp" / "model").is_dir())
    return result


def rl_commands(tmp: Path) -> list[list[str]]:
    return [[PY, "train/rl.py", "--model", str(tmp / "flash_attention_2" / "model"), "--out", str(tmp / "rl-model"),
             "--run-dir", str(tmp / "rl"), "--steps", "2", "--images-per-step", "4", "--group-size", "4",
             "--probe-every", "0", "--sample-every", "1000", "--checkpoint-every", "1000", "--device", "cuda",
             "--wandb", "disabled"]]


def run_rl(tmp: Path, results: dict) -> dict:
    if not (tmp / "flash_attention_2" / "model").is_dir():
        return {"ok": None, "skipped": "no flash-attn model (train_flash did not run)"}
    return _shell(rl_commands(tmp))


def run_pretrained_tokenizer(tmp: Path, results: dict) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import JanusVQVAE, JanusVQVAEConfig

    from ugen.image_tokenizers import load_image_tokenizer
    from ugen.runtime import pick_device

    torch.manual_seed(0)
    JanusVQVAE(JanusVQVAEConfig(num_patches=16)).save_pretrained(tmp / "janus")  # 16,384 codes, factor 16, 256 px
    pick_device("cuda")  # TF32 on, as in training
    images = F.interpolate(torch.rand(16, 3, 16, 16) * 2 - 1, size=(256, 256), mode="bilinear")  # smooth, like pictures
    cpu = load_image_tokenizer(tmp / "janus", "cpu").encode(images)
    tokenizer = load_image_tokenizer(tmp / "janus", "cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        cuda = tokenizer.encode(images.cuda()).cpu()
    began = time.monotonic()
    decoded = sum(len(chunk) for chunk in tokenizer.code_patches())
    torch.cuda.synchronize()
    same = float((cpu == cuda).float().mean())
    return {"ok": same >= 0.99, "codes_equal_to_cpu": same, "code_patches_s": round(time.monotonic() - began, 1),
            "codes_decoded": decoded}


CHECKS = [
    Check("tokenizers", "a Shapes VQ tokenizer (300 steps) and a text tokenizer for the runs below",
          tokenizer_commands, run_tokenizers),
    Check("train_flash", "60 bf16 steps of the small preset under flash-attn: loss, tokens/s, MFU",
          _train("flash_attention_2"), run_train("flash_attention_2")),
    Check("train_sdpa", "the same 60 steps under SDPA", _train("sdpa"), run_train("sdpa")),
    Check("losses_agree", "flash-attn's and SDPA's final losses within 5% of each other", lambda tmp: [], run_losses_agree),
    Check("packed_vs_unpacked", "under flash-attn, packed rows flattened into one sequence against each row alone",
          lambda tmp: [], run_packed),
    Check("compiled_vs_eager", "the compiled decode step (CUDA graphs) against eager: identical images on the same seeds",
          lambda tmp: [], run_compiled),
    Check("fsdp_checkpoint", "one-GPU FSDP for 40 steps (checkpoints at 20 and 40), then resumed to 60",
          fsdp_commands, run_fsdp),
    Check("rl_two_steps", "two Unified-GRPO steps on the flash-attn model (rollouts under autocast)", rl_commands, run_rl),
    Check("pretrained_tokenizer", "a LlamaGen-VQ-16-shaped JanusVQVAE: CUDA codes (bf16 autocast, TF32 on) against the "
          "CPU's, and decoding its 16,384 codes alone", lambda tmp: [], run_pretrained_tokenizer),
]


def dry_run(tmp: Path) -> None:
    print(f"gpu-check would run, in {tmp} (a temporary directory), and write {OUT.relative_to(REPO)}:")
    for check in CHECKS:
        print(f"- {check.name}: {check.what}")
        for command in check.commands(tmp):
            print(f"    {shlex.join(command)}")
        if not check.commands(tmp):
            print("    (in this process, on what the runs above wrote)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="say what it would check, run nothing")
    parser.add_argument("--out", default=str(OUT), help="where the results go (JSON)")
    args = parser.parse_args()
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu-check: no CUDA device here, so a dry run: what it would check on one", flush=True)
        args.dry_run = True
    with tempfile.TemporaryDirectory(prefix="ugen-gpu-check-") as directory:
        tmp = Path(directory)
        if args.dry_run:
            return dry_run(tmp)
        began, results = time.monotonic(), {}
        for check in CHECKS:
            started = time.monotonic()
            try:
                results[check.name] = check.run(tmp, results)
            except Exception as err:  # one check's fault is its row, and the rest still run
                results[check.name] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
            results[check.name]["seconds"] = round(time.monotonic() - started, 1)
            print(check.name, results[check.name], flush=True)
    report = {"benchmark": "gpu_check", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "seconds": round(time.monotonic() - began, 1), "checks": results,
              "all_ok": all(r.get("ok") is not False for r in results.values())}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("device", "seconds", "all_ok")}))
    if not report["all_ok"]:
        raise SystemExit("gpu-check: some checks failed (see " + args.out + ")")


if __name__ == "__main__":
    main()
