"""Scores computed against the Shapes world's ground truth (the parser is the judge)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from ugen.shapes import Scene, caption_objects, parse, scene_matches


def caption_names_scene(caption: str, scene: Scene) -> bool:
    """A caption is right when the (color, shape) objects it mentions are exactly the scene's."""
    mentioned = Counter((color, shape) for _, color, shape in caption_objects(caption))
    return mentioned == Counter((o.color, o.shape) for o in scene.objects)


def image_shows(image: np.ndarray, prompt_scene: Scene) -> bool:
    """A generated image is right when the parser finds exactly the prompt's objects, compared on
    the attributes the prompt states (color and shape for 'a red circle')."""
    return scene_matches(parse(image), prompt_scene, check=("color", "shape"))


def answer_correct(predicted: str, answer: str) -> bool:
    return predicted.strip().lower().rstrip(".") == answer.strip().lower()


def mean(flags) -> float:
    flags = list(flags)
    return float(np.mean(flags)) if flags else float("nan")
