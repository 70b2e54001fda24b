"""What ugen needs of an image tokenizer, whoever trained it: pixels to a grid of discrete codes
and back. ugen's own tokenizer (`ugen_vq.UgenVQ`) and the adapters around pretrained ones
(LlamaGen/Janus, Emu3, diffusers' VQModel) all implement `ImageTokenizer`, so pretraining, the
code cache, sampling and the server never ask which one they hold.

The contract: images go in and come out as (B, 3, H, W) floats in [-1, 1] whatever range the
wrapped network expects (each adapter converts); codes are (B, grid * grid) longs in row-major
order, in [0, num_codes).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ugen.errors import UserError
from ugen.runtime import write_json

MAX_CODES = 2**20  # IBQ's 131,072 and Cosmos' 64,000 fit; every code is a row of the transformer's embedding and head
# The file that names a pretrained tokenizer's adapter and the image size it runs at, beside the
# library's own config.json and weights in a model directory's vq/.
ADAPTER_FILE = "image_tokenizer.json"


def code_dtype(num_codes: int) -> np.dtype:
    """How a codebook's ids are stored (the code cache): int16 up to 32,768 codes, int32 past that
    (Emu3's 32,768 still fit in int16; Cosmos' 64,000 and IBQ's 131,072 do not)."""
    return np.dtype(np.int16 if num_codes <= 2**15 else np.int32)


class ImageTokenizer(nn.Module):
    """The interface. Subclasses set `kind`, `num_codes`, `downsample` and `image_size` and
    implement `encode`, `features`, `_decode_grid` and `save`; the rest is shared."""

    kind: str  # the adapter's name in a model directory's vq/image_tokenizer.json ("ugen": ugen's own)
    num_codes: int
    downsample: int  # pixels per code along each side
    image_size: int  # the side of the square images it encodes and decodes
    pixel_range: tuple[float, float] = (-1.0, 1.0)  # what the wrapped network itself takes and gives
    encode_batch: int = 256  # images per encoder call when building the code cache
    patch_side: int = 1  # codes per side of the uniform grid `code_patches` decodes (see there)

    @property
    def grid(self) -> int:
        return self.image_size // self.downsample

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, grid*grid) codes in [0, num_codes), row-major."""
        raise NotImplementedError

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, D, grid, grid): the encoder's latent before quantization
        (the vq_cosine reward compares images by it)."""
        raise NotImplementedError

    def _decode_grid(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) codes -> (B, 3, h * downsample, w * downsample) images in [-1, 1]; any h, w."""
        raise NotImplementedError

    def save(self, directory: str | os.PathLike) -> None:
        """Write everything `load_image_tokenizer` needs into `directory`."""
        raise NotImplementedError

    def check_images(self, images: torch.Tensor) -> None:
        size = self.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"expected images of shape (B, 3, {size}, {size}), got {tuple(images.shape)}")

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, grid*grid) codes -> (B, 3, H, W) images in [-1, 1]."""
        if codes.ndim != 2 or codes.shape[1] != self.grid * self.grid:
            raise ValueError(f"expected codes of shape (B, {self.grid * self.grid}), got {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.num_codes):
            raise ValueError(f"codes must be in [0, {self.num_codes})")
        return self._decode_grid(codes.long().view(-1, self.grid, self.grid).to(self.device))

    @torch.no_grad()
    def code_patches(self, chunk: int = 256) -> Iterator[torch.Tensor]:
        """What each code looks like, decoded alone: chunks of (n, 3 * downsample**2) pixel rows in
        [-1, 1], channels first, in code order (what `--image-init pixels` starts image rows from).

        Each code fills a `patch_side` x `patch_side` grid and the centre cell is kept, so a
        decoder's zero padding barely touches it. ugen's small decoder affords 7 x 7 (its 3x3
        convolutions reach about 3 codes); a pretrained decoder is tens of millions of
        parameters, so it decodes each code alone (1 x 1): 131,072 codes in chunks, never more
        than one chunk of pixels in memory."""
        side, cell = self.patch_side, self.downsample
        start = (side // 2) * cell
        for first in range(0, self.num_codes, chunk):
            ids = torch.arange(first, min(first + chunk, self.num_codes), device=self.device)
            images = self._decode_grid(ids[:, None, None].expand(-1, side, side))  # (n, 3, side*cell, side*cell)
            yield images[:, :, start:start + cell, start:start + cell].flatten(1).float().cpu()


class FrozenImageTokenizer(ImageTokenizer):
    """A pretrained tokenizer: frozen, always in eval mode (a parent's `.train()` must not turn its
    BatchNorm or dropout on), run in fp32 whatever autocast surrounds it and with TF32 off (which
    `pick_device` turns on for CUDA): quantization is an argmin over distances, and bf16 or TF32
    rounding moves codes across boundaries, so a GPU's cache would disagree with a CPU's server."""

    encode_batch = 8  # a pretrained encoder at 256 px holds far more activations per image

    def __init__(self, net: nn.Module, num_codes: int, downsample: int, image_size: int | None, native_size: int | None):
        """`native_size`: the one size the network runs at (Janus' decoder fixes its grid), or None
        where any multiple of `downsample` works; `image_size`: the size asked for, or None for
        the native one (still None for a size-free network: `set_image_size` decides later)."""
        super().__init__()
        self.net = net.float().eval().requires_grad_(False)
        self.num_codes, self.downsample = num_codes, downsample
        if not 2 <= num_codes <= MAX_CODES:
            raise UserError(f"a {self.kind} tokenizer of {num_codes:,} codes: ugen takes 2..{MAX_CODES:,} (each code is a "
                            "row of the transformer's vocabulary)")
        if native_size is not None and image_size not in (None, native_size):
            raise UserError(f"this {self.kind} tokenizer runs at {native_size} px only, not {image_size} "
                            f"(its decoder's grid is fixed at {native_size // downsample} codes)")
        self.image_size = None
        self.set_image_size(image_size or native_size)

    def set_image_size(self, size: int | None) -> None:
        if size is not None and (size < self.downsample or size % self.downsample):
            raise UserError(f"image size {size} is not a positive multiple of the tokenizer's factor {self.downsample}")
        self.image_size = size

    def save(self, directory: str | os.PathLike) -> None:
        """The library's own files (config and weights, `save_pretrained`) and ADAPTER_FILE."""
        directory = Path(directory)
        self.net.save_pretrained(directory)
        write_json(directory / ADAPTER_FILE, {"kind": self.kind, "image_size": self.image_size})

    def train(self, mode: bool = True) -> "FrozenImageTokenizer":
        return super().train(False)

    def _to_net(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> the network's own range."""
        low, high = self.pixel_range
        return (images.float() + 1.0) * ((high - low) / 2.0) + low

    def _from_net(self, images: torch.Tensor) -> torch.Tensor:
        """The network's range -> [-1, 1], clamped (decoders overshoot)."""
        low, high = self.pixel_range
        return ((images.float() - low) * (2.0 / (high - low)) - 1.0).clamp(-1.0, 1.0)

    @contextlib.contextmanager
    def _fp32(self) -> Iterator[None]:
        """No autocast and no TF32 inside; the global TF32 settings are restored after."""
        matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            with torch.autocast(self.device.type, enabled=False):
                yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        self.check_images(images)
        with self._fp32():
            return self._latent(self._to_net(images.to(self.device)))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        latent = self.features(images)
        with self._fp32():  # the search too
            return nearest_codes(latent, self._codebook()).flatten(1)

    @torch.no_grad()
    def _decode_grid(self, codes: torch.Tensor) -> torch.Tensor:
        with self._fp32():
            return self._from_net(self._decode_net(codes))

    def _latent(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in the network's range -> (B, D, g, g), in the space the codebook lives in."""
        raise NotImplementedError

    def _codebook(self) -> torch.Tensor:
        """(num_codes, D): the entries `encode` takes the nearest of."""
        raise NotImplementedError

    def _decode_net(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) codes -> pixels in the network's range."""
        raise NotImplementedError


def nearest_codes(latent: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) latents -> (B, h, w) ids of the nearest codebook rows (Euclidean), a slice of
    latents at a time with 16M distances each (64 MB): a batch's full distance matrix against a
    131,072-code book would be gigabytes."""
    batch, dim, height, width = latent.shape
    rows = max(1, 2**24 // codebook.shape[0])
    flat = latent.permute(0, 2, 3, 1).reshape(-1, dim)
    squared = codebook.pow(2).sum(1)  # (K,)
    ids = torch.empty(flat.shape[0], dtype=torch.long, device=latent.device)
    for start in range(0, flat.shape[0], rows):
        part = flat[start:start + rows]
        # |z - e|^2 = |z|^2 + |e|^2 - 2 z.e; |z|^2 is the same for every code of a row
        ids[start:start + rows] = (squared - 2.0 * part @ codebook.T).argmin(1)
    return ids.view(batch, height, width)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) floats in [-1, 1] -> (N, H, W, 3) uint8."""
    pixels = ((images.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return pixels.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def encode_images(tokenizer: ImageTokenizer, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, grid*grid) codes (`code_dtype`): the cache the transformer trains
    on; `batch_size` images per encoder call (default: the tokenizer's `encode_batch`)."""
    codes = np.empty((len(images), tokenizer.grid * tokenizer.grid), dtype=code_dtype(tokenizer.num_codes))
    batch_size = batch_size or tokenizer.encode_batch
    batches = range(0, len(images), batch_size)
    for start in tqdm(batches, desc="encoding images", unit="batch", leave=False, disable=len(batches) < 2):
        batch = to_tensor(images[start:start + batch_size]).to(tokenizer.device)
        codes[start:start + len(batch)] = tokenizer.encode(batch).cpu().numpy()
    return codes
