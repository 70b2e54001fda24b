"""Image tokenizers: ugen's own (`UgenVQ`, trained by tokenizers/train_vq.py) and adapters around
pretrained ones, all behind one interface (`ImageTokenizer`, in base.py). `load_image_tokenizer`
reads any of them from a directory:

- ugen's own: `vq.json` + `vq.safetensors`;
- transformers' `JanusVQVAE` (LlamaGen VQ-16) or `Emu3VQVAE`: a `save_pretrained` directory;
- diffusers' `VQModel` (aMUSEd, MoVQ): a `save_pretrained` directory (the `diffusers` extra).

A model directory keeps its tokenizer in `vq/`, with `image_tokenizer.json` beside a pretrained
one's files naming its adapter and the image size it was trained at.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ugen.errors import UserError, one_line
from ugen.image_tokenizers.base import (
    ADAPTER_FILE,
    MAX_CODES,
    FrozenImageTokenizer,
    ImageTokenizer,
    code_dtype,
    encode_images,
    to_tensor,
    to_uint8,
)
from ugen.image_tokenizers.ugen_vq import UgenVQ, VQConfig

__all__ = ["ADAPTER_FILE", "MAX_CODES", "FrozenImageTokenizer", "ImageTokenizer", "UgenVQ", "VQConfig", "code_dtype",
           "encode_images", "load_image_tokenizer", "to_tensor", "to_uint8"]

# transformers' model types with an adapter; the full models a user may point at by mistake
_TRANSFORMERS_KINDS = {"janus_vqgan": "janus", "emu3_vqgan": "emu3"}
_WHOLE_MODELS = {"janus": "its vq_config part (JanusVQVAE)", "emu3": "its vq_config part (Emu3VQVAE)"}


def load_image_tokenizer(directory: str | os.PathLike, device: str | torch.device = "cpu",
                         image_size: int | None = None) -> ImageTokenizer:
    """The image tokenizer saved in `directory`, in eval mode on `device`. `image_size` is the size
    to run a size-free pretrained tokenizer at (Emu3, diffusers) when the directory does not say;
    it may stay None (then `set_image_size` before encoding)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"image tokenizer {directory}: no such directory")
    if (directory / "vq.json").is_file():
        return UgenVQ.load(directory, device=device)
    if not (directory / "config.json").is_file():
        raise UserError(f"{directory} is not an image tokenizer: neither vq.json (ugen's own) nor config.json "
                        "(a transformers or diffusers save_pretrained directory)")
    try:
        config = json.loads((directory / "config.json").read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{directory}/config.json is not valid JSON: {err}") from None
    adapter = json.loads((directory / ADAPTER_FILE).read_text()) if (directory / ADAPTER_FILE).is_file() else {}
    size = adapter.get("image_size") or image_size
    model_type = config.get("model_type")
    if config.get("_class_name") == "VQModel":
        tokenizer = _diffusers(directory, size)
    elif model_type in _TRANSFORMERS_KINDS:
        tokenizer = _transformers(directory, _TRANSFORMERS_KINDS[model_type], size)
    elif model_type == "chameleon_vqgan":
        raise UserError(f"{directory}: transformers' ChameleonVQVAE has no decoder, and ugen draws images as well as "
                        "reading them; convert the checkpoint to a class with one (JanusVQVAE shares its layout)")
    elif model_type in _WHOLE_MODELS:
        raise UserError(f"{directory} is a whole {model_type} model: save {_WHOLE_MODELS[model_type]} on its own "
                        "with save_pretrained and pass that directory")
    else:
        kind = config.get("_class_name") or model_type or "unknown"
        raise UserError(f"{directory}: a {kind!r} model is not an image tokenizer ugen can use (JanusVQVAE, "
                        "Emu3VQVAE, diffusers' VQModel, or ugen's own)")
    return tokenizer.to(device)


def _transformers(directory: Path, kind: str, image_size: int | None) -> FrozenImageTokenizer:
    from transformers import Emu3VQVAE, JanusVQVAE
    from transformers.utils import logging as hf_logging

    from ugen.image_tokenizers.emu3 import Emu3Tokenizer
    from ugen.image_tokenizers.janus import JanusTokenizer

    hf_logging.disable_progress_bar()  # a local load's bar is noise on stderr
    net_class, adapter = {"janus": (JanusVQVAE, JanusTokenizer), "emu3": (Emu3VQVAE, Emu3Tokenizer)}[kind]
    try:
        net = net_class.from_pretrained(directory, dtype=torch.float32)  # quantization runs in fp32
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise UserError(f"{directory}: {net_class.__name__} cannot load it ({one_line(err)})") from None
    return adapter(net, image_size)


def _diffusers(directory: Path, image_size: int | None) -> FrozenImageTokenizer:
    try:
        from diffusers import VQModel
    except ImportError:
        raise UserError(f"{directory} is a diffusers VQModel: install the extra first (pip install -e '.[diffusers]')") from None
    from ugen.image_tokenizers.diffusers_vq import DiffusersVQTokenizer

    try:
        # low_cpu_mem_usage=False: what diffusers falls back to anyway without accelerate, said quietly
        net = VQModel.from_pretrained(directory, torch_dtype=torch.float32, low_cpu_mem_usage=False)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise UserError(f"{directory}: diffusers' VQModel cannot load it ({one_line(err)})") from None
    return DiffusersVQTokenizer(net, image_size)
