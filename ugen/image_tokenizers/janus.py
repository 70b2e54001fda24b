"""LlamaGen's VQ-16 as transformers' `JanusVQVAE` (Janus and Janus-Pro generate with it; LlamaGen's
own checkpoints convert to it with tokenizers/convert_llamagen.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ugen.image_tokenizers.base import FrozenImageTokenizer


class JanusTokenizer(FrozenImageTokenizer):
    kind = "janus"

    def __init__(self, net, image_size: int | None = None):
        config = net.config
        downsample = 2 ** (len(config.channel_multiplier) - 1)  # one halving between stages
        super().__init__(net, config.num_embeddings, downsample, image_size, native_size=config.num_patches * downsample)

    # LlamaGen's quantizer, which its checkpoints (and Janus') were trained with, compares an
    # l2-normalised latent with an l2-normalised codebook, and the decoder reads normalised
    # entries (JanusVQVAE's get_codebook_entry); transformers' own encode takes the nearest raw
    # entry, which is another code wherever the entries' norms differ.
    def _latent(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net.quant_conv(self.net.encoder(pixels)), dim=1)  # (B, D, g, g)

    def _codebook(self) -> torch.Tensor:
        return F.normalize(self.net.quantize.embedding.weight, dim=1)

    def _decode_net(self, codes: torch.Tensor) -> torch.Tensor:
        # JanusVQVAE.decode does the same for its one fixed grid; code_patches decodes 1 x 1 grids
        latent = F.normalize(self.net.quantize.embedding(codes), dim=-1).permute(0, 3, 1, 2)  # (B, D, h, w)
        return self.net.decoder(self.net.post_quant_conv(latent))
