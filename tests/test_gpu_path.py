"""The parts of the CUDA path that can be checked without a GPU: which attention runs and why, the
dtype models load in, and training forwards that build no KV cache."""

from __future__ import annotations

import contextlib
import importlib.machinery
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from conftest import _script
from ugen import model as ugen_model
from ugen.grpo import RolloutBatch, policy_logits

CUDA = torch.device("cuda")  # a device object needs no GPU; nothing here runs on it


@pytest.fixture()
def fake_flash_attn(monkeypatch):
    """Install a stand-in `flash_attn` module (working or broken) and forget earlier verdicts."""

    def install(**names):
        module = types.ModuleType("flash_attn")
        module.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)
        for name, value in names.items():
            setattr(module, name, value)
        monkeypatch.setitem(sys.modules, "flash_attn", module)

    for cached in (ugen_model._flash_attn_problem, ugen_model._say_once):
        cached.cache_clear()
    yield install
    for cached in (ugen_model._flash_attn_problem, ugen_model._say_once):
        cached.cache_clear()


def test_a_flash_attn_that_does_not_load_falls_back_to_sdpa_saying_why_once(fake_flash_attn, capsys):
    fake_flash_attn()  # found on the path, but without its kernels (as a wheel built for another torch)
    assert ugen_model.attention_implementation(CUDA) == "sdpa"
    assert ugen_model.attention_implementation(CUDA) == "sdpa"
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "flash-attn is installed but does not load" in lines[0] and "flash_attn_func" in lines[0]


def test_a_working_flash_attn_is_used_on_cuda_only(fake_flash_attn, capsys):
    fake_flash_attn(flash_attn_func=lambda *a: None, flash_attn_varlen_func=lambda *a: None)
    assert ugen_model.attention_implementation(CUDA) == "flash_attention_2"
    assert ugen_model.attention_implementation(torch.device("cpu")) == "sdpa"
    assert capsys.readouterr().err == ""


def test_no_flash_attn_is_sdpa_without_a_word(fake_flash_attn, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import fails, find_spec finds nothing
    monkeypatch.setattr(ugen_model.importlib.util, "find_spec", lambda name: None)
    assert ugen_model.attention_implementation(CUDA) == "sdpa"
    assert capsys.readouterr().err == ""


def test_inference_loads_bf16_on_cuda_and_fp32_on_cpu(tiny_model_dir):
    import ugen

    assert ugen_model.inference_dtype(CUDA) == torch.bfloat16
    assert ugen.load(tiny_model_dir, "cpu").model.dtype == torch.float32
    assert ugen.load(tiny_model_dir, "cpu", dtype=torch.bfloat16).model.dtype == torch.bfloat16


class _Recorder(torch.nn.Module):
    """A stand-in model that records how it was called and returns zero logits."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.calls = vocab, []

    def forward(self, input_ids, attention_mask=None, **kwargs):
        self.calls.append(kwargs)
        return types.SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab, requires_grad=True))


def test_training_forwards_build_no_kv_cache(tiny_model_dir):
    import ugen
    from ugen.sequences import collate, pack, text_row

    model = _Recorder(vocab=16)
    ids = torch.tensor([[1, 2, 3, 4]])
    policy_logits(model, RolloutBatch(ids, torch.ones_like(ids), ids[:, 1:], torch.ones(1, 3, dtype=torch.bool)))
    assert model.calls[-1]["use_cache"] is False

    vocab = ugen.load(tiny_model_dir, "cpu").vocab
    pretrain = _script("train/pretrain.py")
    dist = pretrain.Distributed(torch.device("cpu"))
    active = torch.ones(vocab.num_image, dtype=torch.bool)
    model = _Recorder(vocab=vocab.size)
    batch = {**pack([[text_row(vocab, [1, 2, 3])]], 8, vocab.pad), "active": active, "targets": 3}
    pretrain.forward_backward(model, model, batch, 1, vocab, dist, contextlib.nullcontext)
    assert model.calls[-1]["use_cache"] is False
    validation = {"text": collate([text_row(vocab, [1, 2, 3])], vocab.pad, 16)}
    pretrain.validation_losses(model, validation, vocab, active, "cpu", contextlib.nullcontext, dist)
    assert model.calls[-1]["use_cache"] is False


class FakeCuda:
    """torch.cuda as `devices` GPUs would show it to the process that drives `current` (states are
    tagged tensors), so that saving and restoring RNG states can be checked without a GPU."""

    def __init__(self, devices: int, current: int):
        self.devices, self.current, self.states = devices, current, {d: torch.tensor([d], dtype=torch.uint8) for d in range(devices)}

    def install(self, monkeypatch) -> None:
        def device_of(device):
            if device is None or device == "cuda":
                index = self.current
            else:
                index = device if isinstance(device, int) else int(str(device).split(":")[-1])
            if not 0 <= index < self.devices:
                raise RuntimeError(f"invalid device ordinal {index} ({self.devices} GPUs)")
            return index

        def get_state(device="cuda"):
            return self.states[device_of(device)].clone()

        def set_state(state, device="cuda"):
            self.states[device_of(device)] = state.clone()

        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.devices)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "get_rng_state", get_state)
        monkeypatch.setattr(torch.cuda, "set_rng_state", set_state)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [get_state(d) for d in range(self.devices)])
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: [set_state(s, d) for d, s in enumerate(states)])


def test_a_run_saved_on_eight_gpus_resumes_on_two(monkeypatch):
    from ugen.runtime import rng_state, set_rng_state

    saving = FakeCuda(devices=8, current=5)
    saving.states[5] = torch.tensor([55], dtype=torch.uint8)  # rank 5's generator, drawn from
    saving.install(monkeypatch)
    saved = rng_state()
    resuming = FakeCuda(devices=2, current=1)
    resuming.install(monkeypatch)
    set_rng_state(saved)  # raised "invalid device ordinal 2" when every saved device was restored
    assert resuming.states[1].tolist() == [55]  # this process's device continues the saver's own stream
    legacy = {**saved, "cuda": [torch.tensor([d + 100], dtype=torch.uint8) for d in range(8)]}  # an older checkpoint
    set_rng_state(legacy)
    assert resuming.states[1].tolist() == [101]


def test_the_engine_runs_fp32_weights_under_autocast_where_flash_attn_needs_it(tiny_model_dir):
    """flash-attn takes bf16 or fp16 only. RL's policy keeps fp32 weights (it trains them), and its
    rollouts go through the engine: on CUDA they must run under bf16 autocast as training does.
    Here an attention kernel that refuses fp32 as flash-attn does stands in for it on the CPU."""
    from transformers import AttentionInterface
    from transformers.integrations.flash_attention import get_target_dtype
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    import ugen
    from ugen.sampling import Engine, needs_autocast

    def refuses_fp32(module, query, key, value, attention_mask, **kwargs):
        # transformers' flash-attn path: fp32 inputs are cast to autocast's dtype when autocast is
        # on, else to the weights' (fp32 here), which the kernel then refuses
        target = get_target_dtype(query, module)
        if target is not None:
            query, key, value = (t.to(target) for t in (query, key, value))
        if query.dtype not in (torch.bfloat16, torch.float16):
            raise RuntimeError("FlashAttention only supports fp16 and bf16 data type")
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("refuses_fp32", refuses_fp32)
    model = ugen.load(tiny_model_dir, "cpu")
    assert next(model.model.parameters()).dtype == torch.float32
    model.model.set_attn_implementation("refuses_fp32")
    prompt = [[model.vocab.bos, *model.vocab.from_text([5, 6])]]
    with pytest.raises(RuntimeError, match="only supports fp16 and bf16"):
        Engine(model.model, model.vocab, model.image_tokenizer.grid, autocast=False).generate(prompt, max_new_tokens=3)
    engine = Engine(model.model, model.vocab, model.image_tokenizer.grid, autocast=True)
    assert len(engine.generate(prompt, max_new_tokens=3)[0]) > 0
    # What each device and weight type gets by default: fp32 weights on CUDA (RL's policy) autocast.
    assert needs_autocast(CUDA, torch.float32) and not needs_autocast(CUDA, torch.bfloat16)
    assert not needs_autocast(torch.device("cpu"), torch.float32)


def test_packed_micro_batches_go_to_flash_attn_as_one_sequence(tiny_model_dir):
    """transformers' flash-attn path reads restarting position_ids as row boundaries only in a
    batch of one sequence, so under flash-attn each micro-batch of packed sequences is flattened;
    under SDPA (the CPU's) the flattened batch gives the same loss as the batch as it was."""
    import ugen
    from ugen.model import masked_loss
    from ugen.sequences import pack, text_row
    from ugen.training import forward_backward

    class Shapes(_Recorder):
        def __init__(self, vocab: int, attention: str):
            super().__init__(vocab)
            self.config, self.shapes = types.SimpleNamespace(_attn_implementation=attention), []

        def forward(self, input_ids, attention_mask=None, **kwargs):
            self.shapes.append((tuple(input_ids.shape), kwargs["position_ids"].tolist()))
            return super().forward(input_ids, attention_mask, **kwargs)

    model = ugen.load(tiny_model_dir, "cpu")
    v = model.vocab
    bins = [[text_row(v, [1, 2, 3]), text_row(v, [4, 5])], [text_row(v, [6, 7, 8, 9])], [text_row(v, [3, 3])]]
    batch = {**pack(bins, 10, v.pad), "active": torch.ones(v.num_image, dtype=torch.bool), "targets": 1}
    dist = types.SimpleNamespace(device=torch.device("cpu"), world=1, gradient_sync=lambda wrapped, sync: contextlib.nullcontext())
    seen = {}
    for attention in ("flash_attention_2", "sdpa"):
        seen[attention] = Shapes(v.size, attention)
        forward_backward(seen[attention], seen[attention], batch, 2, v, dist, contextlib.nullcontext)
    assert [shape for shape, _ in seen["flash_attention_2"].shapes] == [(1, 20), (1, 10)]  # micro-batches of 2 and 1
    assert [shape for shape, _ in seen["sdpa"].shapes] == [(2, 10), (1, 10)]
    assert seen["flash_attention_2"].shapes[0][1][0] == batch["position_ids"][:2].reshape(-1).tolist()  # restarts kept

    lm = model.model.float().eval()

    def loss(part):  # no cache: transformers reads packed rows from position_ids only without one
        logits = lm(input_ids=part["input_ids"], position_ids=part["position_ids"], use_cache=False).logits
        return masked_loss(logits, part["labels"], v, None)

    with torch.no_grad():
        as_is = loss(batch)
        flattened = loss({k: batch[k].reshape(1, -1) for k in ("input_ids", "position_ids", "labels")})
        rows_alone = [pack([[row]], len(row.ids), v.pad) for rows in bins for row in rows]
        alone = sum(loss(r) * int((r["labels"] >= 0).sum()) for r in rows_alone) / sum(int((r["labels"] >= 0).sum()) for r in rows_alone)
    torch.testing.assert_close(as_is, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(flattened, alone, rtol=1e-5, atol=1e-5)


def test_ugen_attention_names_the_kernel(fake_flash_attn, monkeypatch):
    """`make gpu-check` trains under flash-attn and under SDPA on one machine: UGEN_ATTENTION picks."""
    from ugen.errors import UserError

    fake_flash_attn(flash_attn_func=object(), flash_attn_varlen_func=object())
    assert ugen_model.attention_implementation(CUDA) == "flash_attention_2"
    monkeypatch.setenv("UGEN_ATTENTION", "sdpa")
    assert ugen_model.attention_implementation(CUDA) == "sdpa"
    monkeypatch.setenv("UGEN_ATTENTION", "eager")
    assert ugen_model.attention_implementation(torch.device("cpu")) == "eager"
    monkeypatch.setenv("UGEN_ATTENTION", "flash_attention_2")
    with pytest.raises(UserError, match="needs CUDA"):
        ugen_model.attention_implementation(torch.device("cpu"))
    monkeypatch.setenv("UGEN_ATTENTION", "flash")
    with pytest.raises(UserError, match="must be one of"):
        ugen_model.attention_implementation(CUDA)


def test_gpu_check_runs_dry_on_a_cpu_and_its_commands_parse():
    """`make gpu-check` on a machine without CUDA says what it would check; every command it would
    run is accepted by its script's own argument parser (a renamed flag fails here, not on the GPU)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import gpu_check

    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py"], cwd=gpu_check.REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr
    assert "no CUDA device here, so a dry run" in done.stdout
    assert all(f"- {check.name}:" in done.stdout for check in gpu_check.CHECKS)
    tmp = Path("/nonexistent/gpu-check")
    parsed = 0
    for check in gpu_check.CHECKS:
        for command in check.commands(tmp):
            command = command[next(i for i, part in enumerate(command) if part.endswith(".py")):]  # the script, its flags
            module = _script(command[0])
            if hasattr(module, "parse_args"):
                module.parse_args(command[1:])
                parsed += 1
    assert parsed == 6  # train_vq, pretrain x 2, FSDP x 2, rl
