"""ugen's own image tokenizer: images <-> a grid of discrete codes that the transformer reads and
writes, trained for the data at hand (pretrained ones are adapted in the sibling modules).

A small convolutional encoder downsamples by a power of two (`downsample`: 8 for Shapes, 48 px ->
6x6 codes; 16 as in LlamaGen, 256 px -> 16x16 codes) into
a quantizer from `vector-quantize-pytorch`: FSQ by default (no codebook to collapse and no
commitment loss; levels [8, 5, 5, 5] give 1000 codes), or a learned `VectorQuantize` codebook with
EMA updates, k-means init, cosine similarity and dead-code restarts. The decoder mirrors the
encoder. The first stage is a space-to-depth (2x2 pixels -> 12 channels) rather than a convolution,
so that no layer runs at full resolution, where a CPU would spend most of a step; on Shapes, whose
objects sit exactly in 2x2 blocks of codes, nothing is lost (the parser reads every object on
reconstructions). The tokenizer is trained once (`tokenizers/train_vq.py`), saved as
safetensors + JSON, and frozen: every later stage only calls `encode` and `decode`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from vector_quantize_pytorch import FSQ, VectorQuantize

from ugen.errors import UserError
from ugen.image_tokenizers.base import MAX_CODES, ImageTokenizer
from ugen.runtime import write_json

WEIGHTS_FILE = "vq.safetensors"
CONFIG_FILE = "vq.json"
QUANTIZERS = ("fsq", "vq")
ENCODERS = ("wide", "cell")
DOWNSAMPLES = (4, 8, 16, 32)  # one stride-2 stage per factor of two


def default_channels(downsample: int) -> list[int]:
    """Widths of the stages of a tokenizer downsampling by `downsample`: 16 at 1/2 resolution,
    doubling at each further stage ([16, 32, 64] for 8, [16, 32, 64, 128] for 16), so the extra
    stages of a larger factor get the width their coarser grid can afford."""
    return [16 * 2**i for i in range(int(math.log2(downsample)))]


@dataclass
class VQConfig:
    """Everything that builds a `UgenVQ`; saved beside its weights as vq.json."""

    image_size: int = 48
    downsample: int = 8  # image pixels per code along each side: the code grid is image_size / downsample
    channels: list[int] | None = None  # widths at 1/2, 1/4, ... 1/downsample resolution (None: default_channels)
    res_blocks: int = 1  # residual blocks at the coarsest (code-grid) resolution, in each of enc and dec
    # What each code sees. "wide": 3x3 convolutions, so a code also encodes its neighbours (the
    # usual tokenizer). "cell": only its own downsample x downsample pixels (non-overlapping
    # strides, 1x1 mixing), so equal cells always get equal codes: a plain background is one code
    # however near an object it lies. The decoder is wide either way.
    encoder: str = "wide"
    quantizer: str = "fsq"  # "fsq" or "vq"
    levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])  # FSQ: codes = product of levels
    codebook_size: int = 1024  # VQ only
    codebook_dim: int = 16  # VQ only: the latent width each code lives in
    commitment_weight: float = 0.25  # VQ only

    def __post_init__(self) -> None:
        if self.downsample not in DOWNSAMPLES:
            raise UserError(f"downsample must be one of {', '.join(map(str, DOWNSAMPLES))}, not {self.downsample}")
        stages = int(math.log2(self.downsample))
        self.channels = default_channels(self.downsample) if self.channels is None else list(self.channels)
        self.levels = list(self.levels)
        if self.encoder not in ENCODERS:
            raise UserError(f"encoder must be one of {', '.join(ENCODERS)}, not {self.encoder!r}")
        if self.quantizer not in QUANTIZERS:
            raise UserError(f"quantizer must be one of {', '.join(QUANTIZERS)}, not {self.quantizer!r}")
        if self.image_size <= 0 or self.image_size % self.downsample:
            raise UserError(f"image size must be a positive multiple of {self.downsample} (the downsampling "
                            f"factor), not {self.image_size}")
        if len(self.channels) != stages or min(self.channels) <= 0:
            raise UserError(f"channels must be {stages} positive widths (one per stage of a factor-{self.downsample} "
                            f"tokenizer), not {self.channels}")
        if self.res_blocks < 0:
            raise UserError(f"res_blocks must be >= 0, not {self.res_blocks}")
        if self.quantizer == "fsq" and (not self.levels or min(self.levels) < 3):
            raise UserError(f"FSQ levels must each be >= 3, not {self.levels}")
        if not 2 <= self.num_codes <= MAX_CODES:
            raise UserError(f"the codebook must have 2..{MAX_CODES:,} codes (each is a row of the transformer's "
                            f"vocabulary), not {self.num_codes:,}")

    @property
    def num_codes(self) -> int:
        return math.prod(self.levels) if self.quantizer == "fsq" else self.codebook_size

    @property
    def latent_dim(self) -> int:
        return len(self.levels) if self.quantizer == "fsq" else self.codebook_dim


class ResBlock(nn.Module):
    """conv-act-conv with a skip: lets the coarse stage mix neighbouring codes' context cheaply."""

    def __init__(self, width: int, kernel: int = 3):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, kernel, padding=kernel // 2), nn.SiLU(),
            nn.Conv2d(width, width, kernel, padding=kernel // 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _encoder(config: VQConfig) -> nn.Sequential:
    first, *rest = config.channels
    cell = config.encoder == "cell"  # no kernel reaches past the code's own cell
    layers: list[nn.Module] = [
        # Space-to-depth instead of a full-resolution conv: each 2x2 pixel block becomes 12
        # channels, so no layer runs at full resolution (the costliest place on a CPU).
        nn.PixelUnshuffle(2), nn.Conv2d(12, first, 1 if cell else 3, padding=0 if cell else 1), nn.SiLU(),  # (B, c1, H/2, W/2)
    ]
    for wider, width in zip(config.channels, rest):  # each stage halves the resolution
        down = nn.Conv2d(wider, width, 2, stride=2) if cell else nn.Conv2d(wider, width, 4, stride=2, padding=1)
        layers += [down, nn.SiLU()]  # (B, c_i, H/2^i, W/2^i)
    layers += [ResBlock(config.channels[-1], kernel=1 if cell else 3) for _ in range(config.res_blocks)]
    layers += [nn.Conv2d(config.channels[-1], config.latent_dim, 1)]  # (B, D, g, g)
    return nn.Sequential(*layers)


def _decoder(config: VQConfig) -> nn.Sequential:
    widths = config.channels[::-1]  # coarsest first
    layers: list[nn.Module] = [nn.Conv2d(config.latent_dim, widths[0], 3, padding=1), nn.SiLU()]  # (B, c_last, g, g)
    layers += [ResBlock(widths[0]) for _ in range(config.res_blocks)]
    for wider, width in zip(widths, widths[1:]):  # each stage doubles the resolution
        layers += [nn.ConvTranspose2d(wider, width, 4, stride=2, padding=1), nn.SiLU()]
    layers += [nn.Conv2d(widths[-1], 12, 3, padding=1), nn.PixelShuffle(2)]  # (B, 3, H, W): each 2x2 block from 12 channels
    return nn.Sequential(*layers)


def _init_weights(module: nn.Module) -> None:
    """He init (zero biases): keeps activations at unit scale through the stack.

    PyTorch's default conv init shrinks the signal at every layer; by the quantizer, images
    differed by ~1% of an FSQ level, so every image mapped to one code, and with a plain loss
    training never left that state.
    """
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        nn.init.zeros_(module.bias)


class UgenVQ(ImageTokenizer):
    """ugen's own tokenizer, trained by tokenizers/train_vq.py: encoder -> quantizer -> decoder."""

    kind = "ugen"

    def __init__(self, config: VQConfig):
        super().__init__()
        self.config = config
        self.image_size, self.downsample, self.num_codes = config.image_size, config.downsample, config.num_codes
        self.patch_side = min(self.grid, 7)  # see code_patches
        self.encoder = _encoder(config)
        self.decoder = _decoder(config)
        if config.quantizer == "fsq":
            self.quantizer = FSQ(levels=config.levels)
        else:
            self.quantizer = VectorQuantize(
                dim=config.codebook_dim,
                codebook_size=config.codebook_size,
                kmeans_init=True,  # codes start on the data, not at random
                use_cosine_sim=True,  # l2-normalised codes: better usage, no scale drift
                threshold_ema_dead_code=2,  # codes used less than this get re-seeded from the batch
                commitment_weight=config.commitment_weight,
                accept_image_fmap=True,
            )

        self.apply(_init_weights)

    def _quantize(self, latent: torch.Tensor, frozen: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, D, g, g) latent -> quantized (B, D, g, g), indices (B, g, g), aux loss ().

        `frozen` keeps a VQ codebook from updating even in training mode: encoding is a read.
        """
        if self.config.quantizer == "fsq":
            quantized, indices = self.quantizer(latent)
            return quantized, indices, latent.new_zeros(())
        quantized, indices, loss = self.quantizer(latent, freeze_codebook=frozen)
        return quantized, indices, loss

    def _decode_latent(self, quantized: torch.Tensor) -> torch.Tensor:
        recon = self.decoder(quantized)  # (B, 3, H, W)
        # Clamped only outside training: a clamp would stop the gradient of overshooting pixels.
        return recon if self.training else recon.clamp(-1.0, 1.0)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction (B, 3, H, W), codes (B, grid*grid) and the quantizer's auxiliary loss
        (VQ commitment; zero for FSQ)."""
        self.check_images(images)
        quantized, indices, aux_loss = self._quantize(self.encoder(images))
        return self._decode_latent(quantized), indices.flatten(1).long(), aux_loss

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, grid*grid) codes in [0, num_codes), row-major."""
        self.check_images(images)
        _, indices, _ = self._quantize(self.encoder(images), frozen=True)
        return indices.flatten(1).long()

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        self.check_images(images)
        return self.encoder(images)

    def _decode_grid(self, codes: torch.Tensor) -> torch.Tensor:
        return self._decode_latent(self._latent_of(codes))

    def _latent_of(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, h, w) code indices -> (B, D, h, w) quantized latent."""
        if self.config.quantizer == "fsq":
            return self.quantizer.indices_to_codes(indices)
        return self.quantizer.get_output_from_indices(indices)

    def save(self, directory: str | os.PathLike) -> None:
        """Write vq.safetensors and vq.json into `directory`, each through a temporary name."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / (WEIGHTS_FILE + ".tmp")
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(tmp))
        tmp.replace(directory / WEIGHTS_FILE)
        write_json(directory / CONFIG_FILE, asdict(self.config))

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> "UgenVQ":
        """A saved tokenizer in eval mode (frozen: nothing later trains it)."""
        directory = Path(directory)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise UserError(f"{directory} is not a VQ tokenizer: {name} is missing")
        config = VQConfig(**json.loads((directory / CONFIG_FILE).read_text()))
        model = cls(config)
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
        return model.to(device).eval()

