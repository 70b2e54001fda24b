"""Image similarities: the reconstruction score of the eval and the rewards of Unified-GRPO.

Each is a small callable `(original, reconstruction, scene or None) -> float` on (H, W, 3) uint8
images, higher is more alike, in [0, 1] for the parser and SSIM and [-1, 1] for cosines. They are
plain callables so that a reward is a weighted sum of any of them.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from ugen.shapes import Scene, parse


def _unit(image: np.ndarray) -> torch.Tensor:
    # float64: SSIM of flat regions is a ratio of tiny variances, which float32 rounds visibly
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].double() / 255  # (1, 3, H, W)


def object_f1(original: np.ndarray, reconstruction: np.ndarray, scene: Scene | None = None) -> float:
    """F1 of the parsed objects (shape, color, size, place) of the reconstruction against the
    scene (or, without one, against the parse of the original); two empty sets score 1."""
    truth = Counter(scene.objects if scene is not None else parse(original))
    found = Counter(parse(reconstruction))
    if not truth and not found:
        return 1.0
    return 2 * sum((truth & found).values()) / (sum(truth.values()) + sum(found.values()))


def ssim(original: np.ndarray, reconstruction: np.ndarray, scene: Scene | None = None) -> float:
    """Structural similarity (torchmetrics), pixels in [0, 1]."""
    return float(structural_similarity_index_measure(_unit(reconstruction), _unit(original), data_range=1.0))


class VQFeatureCosine:
    """Cosine of the VQ encoder's spatially pooled (pre-quantization) features."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @torch.no_grad()
    def __call__(self, original: np.ndarray, reconstruction: np.ndarray, scene: Scene | None = None) -> float:
        pair = torch.cat([_unit(original), _unit(reconstruction)]).float().to(self.tokenizer.device) * 2 - 1  # [-1, 1]
        features = self.tokenizer.encoder(pair).mean(dim=(2, 3))  # (2, D)
        return float(torch.nn.functional.cosine_similarity(features[0], features[1], dim=0))
