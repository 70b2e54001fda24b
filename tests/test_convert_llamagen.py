"""LlamaGen's VQ checkpoints into transformers' JanusVQVAE: a round trip on a tiny random model."""

from __future__ import annotations

import re

import pytest
import torch

from conftest import _script
from ugen.errors import UserError


def _llamagen_names(state: dict) -> dict:
    """A JanusVQVAE state dict under the names LlamaGen's VQModel gives the same weights
    (tokenizer/tokenizer_image/vq_model.py: conv_blocks[i].res / .attn / .downsample|.upsample, and
    mid as a list of block, attention, block), with LlamaGen's usage buffer."""
    out = {}
    for name, tensor in state.items():
        name = re.sub(r"^(encoder)\.down\.(\d+)\.block\.", r"\1.conv_blocks.\2.res.", name)
        name = re.sub(r"^(decoder)\.up\.(\d+)\.block\.", r"\1.conv_blocks.\2.res.", name)
        name = re.sub(r"^(encoder)\.down\.(\d+)\.", r"\1.conv_blocks.\2.", name)
        name = re.sub(r"^(decoder)\.up\.(\d+)\.", r"\1.conv_blocks.\2.", name)
        name = name.replace(".mid.block_1.", ".mid.0.").replace(".mid.attn_1.", ".mid.1.").replace(".mid.block_2.", ".mid.2.")
        out[name] = tensor.clone()
    out["quantize.codebook_used"] = torch.zeros(65536)
    return out


def test_a_llamagen_checkpoint_becomes_a_janus_vqvae_that_decodes_the_same(tmp_path):
    from transformers import JanusVQVAE, JanusVQVAEConfig

    convert = _script("tokenizers/convert_llamagen.py")
    torch.manual_seed(0)
    config = JanusVQVAEConfig(base_channels=32, channel_multiplier=[1, 2], num_res_blocks=1, latent_channels=32,
                              embed_dim=4, num_embeddings=16, num_patches=4)
    original = JanusVQVAE(config).eval()
    checkpoint = tmp_path / "vq_tiny.pt"
    torch.save({"model": _llamagen_names(original.state_dict())}, checkpoint)
    assert not any(".down." in k or ".up." in k or "block_1" in k for k in torch.load(checkpoint)["model"])

    convert.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "janus"), "--image-size", "8"])
    converted = JanusVQVAE.from_pretrained(tmp_path / "janus").eval()
    for field in ("embed_dim", "num_embeddings", "latent_channels", "base_channels", "num_res_blocks", "num_patches"):
        assert getattr(converted.config, field) == getattr(config, field), field
    assert list(converted.config.channel_multiplier) == [1, 2]
    codes = torch.randint(0, 16, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(converted.decode(codes), original.decode(codes))
        pixels = torch.rand(2, 3, 8, 8) * 2 - 1
        torch.testing.assert_close(converted.encoder(pixels), original.encoder(pixels))

    torch.save({"model": {"something.else": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a LlamaGen VQ state dict"):
        convert.main(["--checkpoint", str(tmp_path / "other.pt"), "--out", str(tmp_path / "x")])
    with pytest.raises(UserError, match="multiple of the tokenizer's factor"):
        convert.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "y"), "--image-size", "9"])
