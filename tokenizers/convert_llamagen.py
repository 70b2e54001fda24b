"""Convert one of LlamaGen's own VQ checkpoints (`vq_ds16_c2i.pt`, `vq_ds8_c2i.pt`: a plain state
dict, under "model") into a transformers `JanusVQVAE` directory, the same architecture under other
names, which `save_pretrained` writes and `JanusVQVAE.from_pretrained` reads with no LlamaGen code.

    python tokenizers/convert_llamagen.py --checkpoint vq_ds16_c2i.pt --out runs/llamagen-vq16 [--image-size 256]

The shapes come from the weights themselves: levels (VQ-8 has four, VQ-16 five), widths, residual
blocks per level, the codebook's size and dimension. LlamaGen's usage buffer
(`quantize.codebook_used`) is dropped. Note for whoever encodes with the result: LlamaGen looks up
codes with both the latent and the codebook l2-normalised, while `JanusVQVAE.forward`/`encode`
quantize by plain distance to the raw codebook (its `decode` normalises); an encoder must normalise
both before the nearest code, or its codes are not the ones the checkpoint means. ugen's adapter
(`ugen.image_tokenizers.janus`, what `--image-tokenizer DIR` loads) does.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from ugen.errors import UserError
from ugen.runtime import run_main

# LlamaGen's names -> JanusVQVAE's, in order (the first pattern that matches a key rewrites it).
RENAMES = (
    (r"^(encoder)\.conv_blocks\.(\d+)\.res\.", r"\1.down.\2.block."),
    (r"^(decoder)\.conv_blocks\.(\d+)\.res\.", r"\1.up.\2.block."),
    (r"^(encoder)\.conv_blocks\.(\d+)\.", r"\1.down.\2."),  # .attn.N. and .downsample.conv
    (r"^(decoder)\.conv_blocks\.(\d+)\.", r"\1.up.\2."),  # .attn.N. and .upsample.conv
    (r"^(encoder|decoder)\.mid\.0\.", r"\1.mid.block_1."),
    (r"^(encoder|decoder)\.mid\.1\.", r"\1.mid.attn_1."),
    (r"^(encoder|decoder)\.mid\.2\.", r"\1.mid.block_2."),
)
DROPPED = ("quantize.codebook_used",)  # LlamaGen's running record of the codes used in training


def janus_name(name: str) -> str:
    for pattern, replacement in RENAMES:
        renamed, count = re.subn(pattern, replacement, name)
        if count:
            return renamed
    return name


def janus_config(state: dict[str, torch.Tensor], image_size: int):
    """The JanusVQVAEConfig of a LlamaGen state dict, read from its weights' shapes."""
    from transformers import JanusVQVAEConfig

    try:
        levels = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"encoder\.conv_blocks\.(\d+)\.", k)))
        base = state["encoder.conv_in.weight"].shape[0]
        widths = [state[f"encoder.conv_blocks.{i}.res.0.conv1.weight"].shape[0] for i in range(levels)]
        blocks = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"encoder\.conv_blocks\.0\.res\.(\d+)\.", k)))
        codes, dim = state["quantize.embedding.weight"].shape
        latent = state["quant_conv.weight"].shape[1]
    except (KeyError, ValueError) as err:
        raise UserError(f"not a LlamaGen VQ state dict ({type(err).__name__}: {err})") from None
    factor = 2 ** (levels - 1)
    if image_size % factor:
        raise UserError(f"--image-size {image_size} must be a multiple of the tokenizer's factor, {factor}")
    return JanusVQVAEConfig(embed_dim=dim, num_embeddings=codes, latent_channels=latent, base_channels=base,
                            channel_multiplier=[w // base for w in widths], num_res_blocks=blocks,
                            num_patches=image_size // factor)


def convert(state: dict[str, torch.Tensor], image_size: int = 256):
    """A JanusVQVAE holding a LlamaGen state dict's weights (every one of them, checked)."""
    from transformers import JanusVQVAE

    model = JanusVQVAE(janus_config(state, image_size)).eval()
    renamed = {janus_name(k): v for k, v in state.items() if k not in DROPPED}
    missing, unexpected = model.load_state_dict(renamed, strict=False)
    if missing or unexpected:
        raise UserError(f"the checkpoint does not fit the JanusVQVAE layout: missing {sorted(missing)[:5]}, "
                        f"unexpected {sorted(unexpected)[:5]}")
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="LlamaGen's .pt (a state dict, or {'model': state dict})")
    parser.add_argument("--out", required=True, help="directory for the JanusVQVAE (save_pretrained)")
    parser.add_argument("--image-size", type=int, default=256, help="the image size it encodes (LlamaGen's: 256)")
    args = parser.parse_args(argv)
    path = Path(args.checkpoint)
    if not path.is_file():
        raise UserError(f"--checkpoint {path}: no such file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle and zip errors have no common base
        raise UserError(f"--checkpoint {path}: not a torch checkpoint ({type(err).__name__})") from None
    state = loaded.get("model", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"--checkpoint {path}: holds no state dict")
    model = convert(state, args.image_size)
    model.save_pretrained(args.out)
    config = model.config
    print(f"{path.name} -> {args.out}: JanusVQVAE, {config.num_embeddings} codes of {config.embed_dim} dims, "
          f"{config.num_patches}x{config.num_patches} codes at {args.image_size} px")


if __name__ == "__main__":
    run_main(main)
