"""Scores on hand-made cases whose answer is known."""

import numpy as np

from ugen.metrics import answer_correct, caption_names_scene, image_shows, mean
from ugen.shapes import BACKGROUND, Scene, ShapeObject, render

RED_CIRCLE = Scene((ShapeObject("circle", "red", "large", 4),))


def test_caption_scores():
    assert caption_names_scene("a large red circle in the center", RED_CIRCLE)
    assert not caption_names_scene("a large blue circle in the center", RED_CIRCLE)  # wrong color
    assert not caption_names_scene("a large red square in the center", RED_CIRCLE)  # wrong shape
    assert not caption_names_scene("a red circle and a blue square", RED_CIRCLE)  # an extra object
    two = Scene((ShapeObject("circle", "red", "small", 0), ShapeObject("circle", "red", "large", 8)))
    assert caption_names_scene("two red circles", two)


def test_image_scores_use_the_parser():
    assert image_shows(render(RED_CIRCLE), RED_CIRCLE)
    # The prompt "a red circle" fixes color and shape only: another size and place still counts.
    elsewhere = Scene((ShapeObject("circle", "red", "small", 0),))
    assert image_shows(render(elsewhere), RED_CIRCLE)
    assert not image_shows(render(Scene((ShapeObject("circle", "green", "large", 4),))), RED_CIRCLE)
    blank = np.full((48, 48, 3), BACKGROUND, dtype=np.uint8)
    assert not image_shows(blank, RED_CIRCLE)


def test_answers_and_mean():
    assert answer_correct(" Red.", "red") and not answer_correct("blue", "red")
    assert mean([True, False, True, True]) == 0.75
    assert np.isnan(mean([]))
