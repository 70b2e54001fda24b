"""The unified transformer: a plain `transformers` Llama, so any Llama runtime can serve it.

Presets are named factory functions in one dict (like LlamaGen's GPT_models); the dict also feeds
argparse `choices`. Pretraining may instead start from a pretrained Hugging Face causal LM (Llama,
Qwen2, Mistral, ...), which keeps its architecture: `extend_pretrained_lm` grows its vocabulary.
A model directory is what `save_pretrained` writes (config.json + model.safetensors) plus
`ugen.json` (vocabulary layout, schedule, tokenizer paths), the VQ tokenizer in `vq/` and the text
tokenizer (the SentencePiece model `text.model`, or a pretrained LM's tokenizer in `text/`).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
)

from ugen.errors import UserError, one_line
from ugen.image_tokenizers.base import ImageTokenizer
from ugen.runtime import atomic_dir, write_json
from ugen.sequences import TEXT_TASKS
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


ATTENTIONS = ("sdpa", "flash_attention_2", "eager")  # what UGEN_ATTENTION may name


def attention_implementation(device: torch.device) -> str:
    """flash-attn when it imports on CUDA (the optional `.[gpu]` extra), else PyTorch SDPA;
    `UGEN_ATTENTION` names one instead (`make gpu-check` trains with each kernel in turn).

    The import itself is the check: a wheel built for another torch or CUDA is found on the path
    but fails to load its kernels, and that must be a fallback with its reason, not a crash later."""
    chosen = os.environ.get("UGEN_ATTENTION")
    if chosen:
        if chosen not in ATTENTIONS:
            raise UserError(f"UGEN_ATTENTION must be one of {', '.join(ATTENTIONS)}, not {chosen!r}")
        if chosen == "flash_attention_2" and (device.type != "cuda" or _flash_attn_problem() is not None):
            raise UserError(f"UGEN_ATTENTION=flash_attention_2 needs CUDA and a flash-attn that loads "
                            f"({_flash_attn_problem() or 'this device is ' + device.type})")
        return chosen
    if device.type != "cuda":
        return "sdpa"
    reason = _flash_attn_problem()
    if reason is None:
        return "flash_attention_2"
    if importlib.util.find_spec("flash_attn") is not None:  # installed, but broken: say why, once
        _say_once(f"flash-attn is installed but does not load ({reason}): attention runs on PyTorch SDPA")
    return "sdpa"


@functools.cache
def _flash_attn_problem() -> str | None:
    try:
        from flash_attn import flash_attn_func, flash_attn_varlen_func  # noqa: F401
    except Exception as err:  # ImportError, OSError (undefined symbol), RuntimeError from its CUDA checks
        return one_line(err)
    return None


@functools.cache
def _say_once(message: str) -> None:
    print(message, file=sys.stderr)


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


@torch.no_grad()
def init_image_rows_from_pixels(model: PreTrainedModel, vocab: Vocab, patches: Iterable[torch.Tensor], seed: int) -> None:
    """Start each image code's embedding and output rows from what the code looks like.

    A fresh model's image rows are independent random vectors, so the transformer must first
    learn from data alone which of its 1000 arbitrary code ids look alike; on the tiny CPU budget
    it never finishes (shapes drawn and captioned are its weakest skills). Here each row is a
    fixed random projection of the code's decoded pixels (`ImageTokenizer.code_patches`,
    standardised), scaled to the layer's own init std: codes that look alike start with alike
    rows, and training moves them from there. Random projections keep distances (Johnson-
    Lindenstrauss), so nothing about the pixels is favoured but their similarity. Text rows and
    specials are left as built.

    `patches`: (n, P) chunks in code order (a tensor is one chunk), read once: the pixels are
    projected as they come and centred after (a linear map commutes with the mean), so memory
    holds one chunk beside the rows whatever the codebook's size."""
    layers = (model.get_input_embeddings(), model.get_output_embeddings())
    generator = torch.Generator().manual_seed(seed)
    projections: list[torch.Tensor] = []
    projected: list[list[torch.Tensor]] = [[] for _ in layers]  # per layer, (n, d) per chunk
    pixel_sum, squares, count = 0.0, 0.0, 0
    for chunk in ([patches] if isinstance(patches, torch.Tensor) else patches):
        chunk = chunk.float().cpu()
        if not projections:  # P is known from the first chunk
            projections = [torch.randn(chunk.shape[1], layer.weight.shape[1], generator=generator) / chunk.shape[1] ** 0.5
                           for layer in layers]
        pixel_sum, squares, count = pixel_sum + chunk.sum(0), squares + chunk.pow(2).sum().item(), count + len(chunk)
        for rows, projection in zip(projected, projections):
            rows.append(chunk @ projection)
    if count != vocab.num_image:
        raise ValueError(f"{count} code patches for {vocab.num_image} image codes")
    mean = pixel_sum / count  # (P,)
    # the std of the centred pixels over every entry, unit variance: rows come out at the layer's scale
    std = math.sqrt(max(squares - count * mean.pow(2).sum().item(), 0.0) / max(count * mean.numel() - 1, 1))
    ids = torch.tensor(vocab.from_codes(range(vocab.num_image)))
    for layer, rows, projection in zip(layers, projected, projections):
        weight = layer.weight  # (V, d)
        centred = (torch.cat(rows) - mean @ projection) / max(std, 1e-6)  # (num_image, d)
        weight[ids.to(weight.device)] = (centred * weight.std().item()).to(weight)


def lm_config(directory: str | Path) -> PretrainedConfig:
    """The config of the pretrained causal LM in `directory` (what `--init-from` names)."""
    path = Path(directory)
    if not (path / "config.json").is_file():
        raise UserError(f"--init-from {directory}: no config.json there, not a Hugging Face model directory")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"--init-from {directory}: AutoConfig cannot read it ({one_line(err)})") from None
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise UserError(f"--init-from {directory}: a {config.model_type!r} model is not a causal LM that AutoModelForCausalLM loads")
    return config


def lm_vocab(directory: str | Path, text: Tokenizer, num_image: int, max_len: int) -> Vocab:
    """The text-first vocabulary around the pretrained LM in `directory`: its ids stay on the rows
    that learned them, ugen's specials and the image codes follow.

    Every embedding row is a text id, padding rows past the tokenizer included (Qwen2 pads its
    vocabulary), but sampling never draws those nor the LM's own specials. Rows of `max_len` must
    fit the LM's positions; checked here so that a bad flag fails before the data is encoded.
    """
    config = lm_config(directory).get_text_config()
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and max_len > positions:
        raise UserError(f"--max-len {max_len} is longer than the {positions} positions of the model in {directory}")
    rows = config.vocab_size
    if text.size > rows:
        raise UserError(f"the text tokenizer has {text.size} ids, the model in {directory} only {rows} embedding rows")
    never_emitted = set(text.never_emitted) | set(range(text.size, rows))
    return Vocab(num_text=rows, num_image=num_image, text_first=True, never_emitted=tuple(sorted(never_emitted)))


def extend_pretrained_lm(directory: str | Path, vocab: Vocab, device: torch.device) -> PreTrainedModel:
    """The pretrained LM in `directory`, its embeddings grown from its rows to `vocab.size`.

    The new input and output rows (ugen's specials, then the image codes) start at the mean of the
    LM's rows, as SimpleAR and Liquid do: a new row then sits where the model expects a token, and
    the logits over the LM's own vocabulary are unchanged until training moves them. The weights
    load in float32 whatever they were saved in, as ugen trains with fp32 weights under autocast.
    """
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32,
                                                     attn_implementation=attention_implementation(device))
    except (OSError, ValueError) as err:
        raise UserError(f"--init-from {directory}: AutoModelForCausalLM cannot load it ({one_line(err)})") from None
    rows = model.get_input_embeddings().weight.shape[0]
    if rows != vocab.num_text:
        raise ValueError(f"the vocabulary has {vocab.num_text} text ids for a model with {rows} rows (see lm_vocab)")
    model.resize_token_embeddings(vocab.size, mean_resizing=False)  # mean_resizing samples around the mean
    _rows_at_mean(model, slice(rows, None), slice(0, rows))
    for config in (model.config, model.generation_config):  # plain `generate` stops at ugen's <eos> too
        config.pad_token_id, config.bos_token_id, config.eos_token_id = vocab.pad, vocab.bos, vocab.eos
    return model.to(device)


def _rows_at_mean(model: PreTrainedModel, new: slice, of: slice) -> None:
    """Set the input and output embedding rows `new` to the mean of the rows `of`, in place."""
    # With tied embeddings the output matrix is the input one: set its rows once.
    weights = {id(w): w for w in (model.get_input_embeddings().weight, model.get_output_embeddings().weight)}
    with torch.no_grad():
        for weight in weights.values():  # (V, D)
            weight[new] = weight[of].mean(dim=0)


def is_model_dir(directory: str | Path) -> bool:
    return (Path(directory) / UGEN_JSON).is_file()


def text_lm_of_model_dir(directory: str | Path, text: Tokenizer, num_image: int, max_len: int,
                         device: torch.device) -> tuple[Vocab, PreTrainedModel]:
    """A ugen model pretrained on text alone (no image task in its --mix), as the pretrained LM of
    a multimodal run: its vocabulary, its weights, and each image id's input and output rows reset
    to the mean of the text rows, as `extend_pretrained_lm` starts new rows. What the rows of a
    text-only model's image ids hold is only that they never occur; from the mean they start
    where the model expects a token."""
    meta = read_meta(directory)
    trained = meta.get("pretrain", {})
    images = sorted(t for t, w in trained.get("mix", {}).items() if w > 0 and t not in TEXT_TASKS)
    if images:
        raise UserError(f"--init-from {directory}: a ugen model trained on images too ({', '.join(images)}); "
                        "--init-from takes a text-only one (--resume continues a run)")
    vocab = Vocab.from_dict(meta["vocab"])
    if vocab.num_text != text.size:
        raise UserError(f"--init-from {directory}: its vocabulary has {vocab.num_text} text ids, the text tokenizer {text.size}")
    if vocab.num_image != num_image:
        raise UserError(f"--init-from {directory}: its vocabulary has {vocab.num_image} image ids, the VQ tokenizer {num_image} codes")
    if max_len > meta["max_len"]:
        raise UserError(f"--max-len {max_len} is longer than the {meta['max_len']} positions of the model in {directory}")
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, attn_implementation=attention_implementation(device))
    _rows_at_mean(model, slice(vocab.image_start, None), slice(vocab.text_start, vocab.text_end))
    return vocab, model.to(device)


def masked_loss(logits: torch.Tensor, labels: torch.Tensor, vocab: Vocab, active_codes: torch.Tensor | None,
                reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy with inactive image ids excluded from the softmax: the mean over
    targets, or with `reduction="sum"` their sum (for a mean over a batch split across
    micro-batches and processes, divided by the whole batch's target count).

    logits (..., V), labels (...) already shifted (labels[t] is the target at position t), with
    inactive targets already set to IGNORE by `ugen.sequences.apply_active_vocab`. A mask on the CPU
    that is all True is skipped; one on an accelerator is applied as it is (asking whether it is all
    True would make the host wait for the device).
    """
    logits = logits.float()
    if active_codes is not None and (active_codes.device.type != "cpu" or not bool(active_codes.all())):
        allowed = torch.ones(vocab.size, dtype=torch.bool, device=logits.device)
        allowed[vocab.image_start :] = active_codes.to(logits.device)
        logits = logits.masked_fill(~allowed, float("-inf"))  # (B, T, V)
    return F.cross_entropy(logits.reshape(-1, vocab.size), labels.reshape(-1), ignore_index=-100, reduction=reduction)


def plain_output_layer(model: PreTrainedModel) -> bool:
    """Whether the logits are the output layer applied to the decoder's last hidden states and
    nothing more (no soft-capping or scaling after it, as Gemma 2 and Cohere do), so that a caller
    may apply that layer to the positions it needs only."""
    config = model.config.get_text_config()
    return (model.get_output_embeddings() is not None
            and getattr(config, "final_logit_softcapping", None) is None
            and getattr(config, "logit_scale", None) in (None, 1.0))


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_token(model: PreTrainedModel, seq_len: int) -> float:
    """Training FLOPs per token, as nanochat counts them: 6 per weight that multiplies (the input
    embedding is a lookup, left out unless tied to the output layer) plus 12 * layers * width *
    sequence length for attention's scores and weighted sums."""
    cfg = model.config
    embedding = model.get_input_embeddings().weight
    lookup_only = 0 if embedding is model.get_output_embeddings().weight else embedding.numel()
    return 6 * (num_params(model) - lookup_only) + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


def save_model_dir(
    directory: str | Path,
    model: PreTrainedModel,
    meta: dict[str, Any],
    image_tokenizer: ImageTokenizer | str | Path,
    text: Tokenizer,
) -> Path:
    """Write a complete, self-contained model directory atomically.

    `meta` holds at least `vocab` (Vocab.to_dict()) and whatever the stage wants to keep
    (schedule, resolved config); the tokenizers are written in so the directory stands alone:
    `image_tokenizer` is saved into vq/ (or, given as the vq/ of another model directory, copied).
    """
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if isinstance(image_tokenizer, ImageTokenizer):
            image_tokenizer.save(tmp / "vq")
        else:
            shutil.copytree(image_tokenizer, tmp / "vq")
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


def inference_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA (half the memory traffic, and what flash-attn takes), fp32 on the CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_transformer(directory: str | Path, device: torch.device, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """The transformer of a model directory, in the architecture it was saved with (a model
    started from a pretrained Qwen2 stays a Qwen2), in `dtype` (default: `inference_dtype`; RL,
    which trains it, asks for fp32 and runs under autocast)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a model this size loads instantly; the bar is noise on stderr
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype or inference_dtype(device),
                                                 attn_implementation=attention_implementation(device))
    return model.to(device).eval()
