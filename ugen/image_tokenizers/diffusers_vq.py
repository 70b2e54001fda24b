"""diffusers' `VQModel` (aMUSEd's VQ-GAN, MoVQ as in Kandinsky): the optional `diffusers` extra."""

from __future__ import annotations

import torch

from ugen.errors import UserError
from ugen.image_tokenizers.base import FrozenImageTokenizer


class DiffusersVQTokenizer(FrozenImageTokenizer):
    kind = "diffusers-vq"

    def __init__(self, net, image_size: int | None = None):
        if net.quantize.remap is not None:  # VQModel builds none itself; a subclass could
            raise UserError("a VQModel whose quantizer remaps codes is not supported: its ids are not the codebook's rows")
        config = net.config
        super().__init__(net, config.num_vq_embeddings, 2 ** (len(config.block_out_channels) - 1), image_size, native_size=None)

    def _latent(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.encode(pixels).latents  # (B, D, g, g), before quantization

    def _codebook(self) -> torch.Tensor:
        return self.net.quantize.embedding.weight  # VQModel's quantizer takes the nearest (Euclidean) too

    def _decode_net(self, codes: torch.Tensor) -> torch.Tensor:
        batch, height, width = codes.shape
        if self.net.config.lookup_from_codebook:  # aMUSEd's: decode looks the ids up itself
            return self.net.decode(codes.flatten(), force_not_quantize=True,
                                   shape=(batch, height, width, self.net.quantize.vq_embed_dim)).sample
        latent = self.net.quantize.embedding(codes).permute(0, 3, 1, 2)  # (B, D, h, w)
        return self.net.decode(latent, force_not_quantize=True).sample
