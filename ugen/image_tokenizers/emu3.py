"""Emu3's video/image VQ as transformers' `Emu3VQVAE` (32,768 codes, factor 8, any image size)."""

from __future__ import annotations

import torch

from ugen.image_tokenizers.base import FrozenImageTokenizer


class Emu3Tokenizer(FrozenImageTokenizer):
    kind = "emu3"

    def __init__(self, net, image_size: int | None = None):
        config = net.config
        super().__init__(net, config.codebook_size, 2 ** (len(config.channel_multiplier) - 1), image_size, native_size=None)

    def _latent(self, pixels: torch.Tensor) -> torch.Tensor:
        # Emu3VQVAE.encode's steps for an image (a clip of one frame repeated over the temporal
        # factor, compressed to one latent frame), without its quantizer: that one builds the
        # whole (positions x 32,768) distance matrix of a batch; `encode` searches in slices.
        frames = pixels.unsqueeze(1).repeat(1, self.net.config.temporal_downsample_factor, 1, 1, 1)  # (B, T, 3, H, W)
        hidden = self.net.encoder(frames).permute(0, 2, 1, 3, 4)  # (B, C, 1, g, g)
        return self.net.quant_conv(hidden)[:, :, 0]  # (B, D, g, g)

    def _codebook(self) -> torch.Tensor:
        return self.net.quantize.embedding.weight

    def _decode_net(self, codes: torch.Tensor) -> torch.Tensor:
        return self.net.decode(codes)  # (B, h, w) -> (B, 3, H, W): the first frame of the decoded clip
