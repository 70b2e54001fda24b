"""Examples every training stage consumes, whichever data set they come from.

The Shapes world (`ugen.shapes`) and any image-caption data set that `datasets` can open are both
turned into a list of `Example`s at the VQ tokenizer's resolution, so that the stages downstream
never need to know where the data came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Example:
    """One image with the texts that go with it."""

    image: np.ndarray  # (H, W, 3) uint8 RGB at the data set's resolution
    caption: str  # target of the caption task (Shapes: the long dense caption)
    prompts: list[str]  # conditions for text-to-image (Shapes: the short and the long caption)
    qa: list[tuple[str, str, str]] = field(default_factory=list)  # (question, answer, question type)
    passage: str | None = None  # text-only passage about the scene
    scene: Any = None  # ugen.shapes.Scene for Shapes, None for other data
