"""The unified transformer: a plain `transformers` Llama, so any Llama runtime can serve it.

Presets are named factory functions in one dict (like LlamaGen's GPT_models); the dict also feeds
argparse `choices`. A model directory is what `save_pretrained` writes (config.json +
model.safetensors) plus `ugen.json` (vocabulary layout, schedule, tokenizer paths), the VQ
tokenizer in `vq/` and the text tokenizer (the SentencePiece model `text.model`, or a pretrained LM's
tokenizer in `text/`).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from ugen.errors import UserError
from ugen.runtime import atomic_dir, write_json
from ugen.text_tokenizer import Tokenizer
from ugen.vocab import Vocab

UGEN_JSON = "ugen.json"
FORMAT_VERSION = 1


def _llama(layers: int, dim: int, heads: int, kv_heads: int | None = None, ffn: int | None = None) -> dict[str, Any]:
    return dict(
        num_hidden_layers=layers,
        hidden_size=dim,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        intermediate_size=ffn or 256 * ((8 * dim // 3 + 255) // 256),  # SwiGLU's 8/3 d, rounded up
    )


def tiny() -> dict[str, Any]:
    return _llama(layers=4, dim=192, heads=4, ffn=512)  # ~7k tokens/s on 2 CPU cores: minutes on a laptop


def small() -> dict[str, Any]:
    return _llama(layers=8, dim=512, heads=8)


def base() -> dict[str, Any]:
    return _llama(layers=16, dim=1024, heads=16, kv_heads=8)


def large() -> dict[str, Any]:
    return _llama(layers=24, dim=2048, heads=16, kv_heads=8)


PRESETS = {"tiny": tiny, "small": small, "base": base, "large": large}


def attention_implementation(device: torch.device) -> str:
    """flash-attn when it is installed and on CUDA (the optional `.[gpu]` extra), else PyTorch SDPA."""
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def build_model(preset: str, vocab: Vocab, max_len: int, device: torch.device) -> LlamaForCausalLM:
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    config = LlamaConfig(
        vocab_size=vocab.size,
        max_position_embeddings=max_len,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        pad_token_id=vocab.pad,
        bos_token_id=vocab.bos,
        eos_token_id=vocab.eos,
        **PRESETS[preset](),
    )
    config._attn_implementation = attention_implementation(device)
    return LlamaForCausalLM(config).to(device)


def masked_loss(logits: torch.Tensor, labels: torch.Tensor, vocab: Vocab, active_codes: torch.Tensor | None) -> torch.Tensor:
    """Mean next-token cross-entropy with inactive image ids excluded from the softmax.

    logits (B, T, V), labels (B, T) already shifted (labels[t] is the target at position t), with
    inactive targets already set to IGNORE by `ugen.sequences.apply_active_vocab`.
    """
    logits = logits.float()
    if active_codes is not None and not bool(active_codes.all()):
        allowed = torch.ones(vocab.size, dtype=torch.bool, device=logits.device)
        allowed[vocab.image_start :] = active_codes.to(logits.device)
        logits = logits.masked_fill(~allowed, float("-inf"))  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_token(model: LlamaForCausalLM, seq_len: int) -> float:
    """Training FLOPs per token (6N plus attention), as in nanoGPT's estimate_mfu."""
    cfg = model.config
    return 6 * num_params(model) + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


def save_model_dir(
    directory: str | Path,
    model: LlamaForCausalLM,
    meta: dict[str, Any],
    vq_dir: str | Path,
    text: Tokenizer,
) -> Path:
    """Write a complete, self-contained model directory atomically.

    `meta` holds at least `vocab` (Vocab.to_dict()) and whatever the stage wants to keep
    (schedule, resolved config); the tokenizers are written in so the directory stands alone.
    """
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        shutil.copytree(vq_dir, tmp / "vq")
        text_name = text.save(tmp)
        write_json(tmp / UGEN_JSON, {"format_version": FORMAT_VERSION, "vq": "vq", "text_tokenizer": text_name, **meta})
    return directory


def read_meta(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    path = directory / UGEN_JSON
    if not directory.is_dir():
        raise UserError(f"model directory {directory} does not exist")
    if not path.is_file() or not (directory / "config.json").is_file():
        raise UserError(f"{directory} is not a ugen model directory (no {UGEN_JSON} / config.json)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON: {err}") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path} has format version {meta.get('format_version')}, this ugen reads {FORMAT_VERSION}")
    return meta


def load_transformer(directory: str | Path, device: torch.device) -> LlamaForCausalLM:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a model this size loads instantly; the bar is noise on stderr
    model = LlamaForCausalLM.from_pretrained(directory, attn_implementation=attention_implementation(device))
    return model.to(device).eval()
