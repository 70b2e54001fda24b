"""One image with the texts that go with it: the record every data source yields (the Shapes world
and any image-caption data set) and every stage reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Texts:
    """The texts that go with one image."""

    caption: str  # target of the caption task (Shapes: the long dense caption)
    prompts: list[str]  # conditions for text-to-image (Shapes: the short and the long caption)
    qa: list[tuple[str, str, str]] = field(default_factory=list)  # (question, answer, question type)
    passage: str | None = None  # text-only passage about the scene
    # The scene's layout as text (Shapes: each object's size, color, shape and place), written
    # between a generation prompt and its image when pretraining with --plan; None: no layout.
    layout: str | None = None


@dataclass
class Example:
    """One image with the texts that go with it."""

    image: np.ndarray  # (H, W, 3) uint8 RGB at the data set's resolution
    caption: str
    prompts: list[str]
    qa: list[tuple[str, str, str]] = field(default_factory=list)
    passage: str | None = None
    layout: str | None = None
    scene: Any = None  # ugen.shapes.Scene for Shapes, None for other data

    @classmethod
    def of(cls, image: np.ndarray, texts: Texts, scene: Any = None) -> Example:
        return cls(image=image, caption=texts.caption, prompts=texts.prompts, qa=texts.qa, passage=texts.passage,
                   layout=texts.layout, scene=scene)
