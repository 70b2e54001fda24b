"""The GenEval-style prompts and judge (ugen/geneval.py) and caption attribute metrics."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from ugen.geneval import (
    TASKS,
    Item,
    PromptSpec,
    ground_truth_scene,
    load_prompts,
    make_prompts,
    overall,
    score,
)
from ugen.metrics import caption_attributes
from ugen.shapes import BACKGROUND, IMAGE_SIZE, Scene, ShapeObject, long_caption, parse, render, short_caption

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prompts():
    return make_prompts()


def obj(shape, color, cell, size="large"):
    """An object in the middle of one cell of a 3x3 grid (16 px apart: further than the
    relation margin, so relations read as on the grid)."""
    return ShapeObject(shape, color, size, 8.0 + 16 * (cell % 3), 8.0 + 16 * (cell // 3), 14.0 if size == "large" else 8.0)


def spec(task, prompt, *items, relation=None):
    return PromptSpec(task, prompt, tuple(Item(*i) for i in items), relation)


def test_make_prompts_deterministic_and_unique(prompts):
    assert tuple(prompts) == TASKS
    assert make_prompts() == prompts
    assert make_prompts(seed=1) != prompts
    for task, specs in prompts.items():
        assert len(specs) == 60
        assert len({s.prompt for s in specs}) == len(specs), task
        assert all(s.task == task for s in specs)
        assert all(PromptSpec.from_dict(s.to_dict()) == s for s in specs)


def test_committed_prompt_file_is_current(prompts):
    assert load_prompts(ROOT / "eval" / "prompts" / "geneval.json") == prompts


def test_judge_accepts_rendered_ground_truth(prompts):
    rng = random.Random(0)
    for task, specs in prompts.items():
        for _ in range(2):  # two random realizations of each prompt
            passed = [score(parse(render(ground_truth_scene(s, rng))), s) for s in specs]
            assert np.mean(passed) == 1.0, (task, [s.prompt for s, ok in zip(specs, passed) if not ok])


def test_blank_image_fails_every_task(prompts):
    blank = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), BACKGROUND, dtype=np.uint8)
    found = parse(blank)
    assert found == []
    assert not any(score(found, s) for specs in prompts.values() for s in specs)


def test_colors_and_color_attr():
    colors = spec("colors", "a red circle", (1, "red", "circle"))
    assert score([obj("circle", "red", 4)], colors)
    assert score([obj("circle", "blue", 0), obj("circle", "red", 4), obj("square", "green", 8)], colors)
    assert not score([obj("circle", "blue", 4)], colors)
    assert not score([obj("square", "red", 4)], colors)

    attr = spec("color_attr", "a red circle and a blue triangle", (1, "red", "circle"), (1, "blue", "triangle"))
    assert score([obj("circle", "red", 0), obj("triangle", "blue", 8)], attr)
    assert not score([obj("circle", "blue", 0), obj("triangle", "red", 8)], attr)  # swapped
    assert not score([obj("circle", "red", 0), obj("triangle", "green", 8)], attr)  # wrong color
    assert not score([obj("circle", "red", 0)], attr)  # missing


def test_single_and_two_object_judge_shapes_only():
    single = spec("single_object", "a small red circle", (1, "red", "circle", "small"))
    assert score([obj("circle", "blue", 4, "large"), obj("square", "red", 0)], single)
    assert not score([obj("square", "red", 4)], single)
    two = spec("two_object", "a red circle and a square", (1, "red", "circle"), (1, None, "square"))
    assert score([obj("circle", "green", 0), obj("square", "pink", 1), obj("triangle", "red", 2)], two)
    assert not score([obj("circle", "red", 0), obj("circle", "red", 1)], two)


def test_counting():
    three = spec("counting", "three green triangles", (3, "green", "triangle"))
    tri = [obj("triangle", "green", c) for c in (0, 4, 8)]
    assert score(tri, three)
    assert score(tri + [obj("circle", "green", 1)], three)  # other shapes are allowed
    assert not score(tri[:2], three)  # too few
    assert not score(tri + [obj("triangle", "green", 1)], three)  # too many
    assert not score(tri + [obj("triangle", "red", 1)], three)  # a fourth triangle of another color
    assert not score(tri[:2] + [obj("triangle", "red", 8)], three)  # one of the three has the wrong color
    two = spec("counting", "two circles", (2, None, "circle"))
    assert score([obj("circle", "red", 0), obj("circle", "blue", 5)], two)


@pytest.mark.parametrize("relation, b_cell, ok", [
    ("left of", 5, True), ("left of", 3, False), ("left of", 2, True),
    ("right of", 3, True), ("right of", 5, False),
    ("above", 7, True), ("above", 1, False), ("above", 3, False),
    ("below", 1, True), ("below", 7, False),
])
def test_position(relation, b_cell, ok):
    s = spec("position", "...", (1, "red", "circle"), (1, "blue", "square"), relation=relation)
    found = [obj("circle", "red", 4), obj("square", "blue", b_cell)]
    assert score(found, s) is ok


def test_position_needs_both_objects_with_their_colors():
    s = spec("position", "a red circle to the left of a blue square",
             (1, "red", "circle"), (1, "blue", "square"), relation="left of")
    assert s.prompt == "a red circle to the left of a blue square"
    assert not score([obj("circle", "green", 3), obj("square", "blue", 5)], s)
    assert not score([obj("circle", "red", 3)], s)


def test_ground_truth_scene_realizes_prompt():
    rng = random.Random(1)
    s = spec("counting", "four orange squares", (4, "orange", "square"))
    scene = ground_truth_scene(s, rng)
    assert [(o.shape, o.color) for o in scene.objects] == [("square", "orange")] * 4


def test_overall_is_unweighted_mean():
    scores = dict(zip(TASKS, [1.0, 0.5, 0.0, 0.25, 0.75, 0.5]))
    assert overall(scores) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        overall({"colors": 1.0})


def test_caption_attributes():
    scene = Scene((obj("circle", "red", 0, "small"), obj("square", "blue", 4)))
    for caption in (short_caption(scene), long_caption(scene)):
        m = caption_attributes(caption, scene)
        assert (m["precision"], m["recall"], m["f1"], m["count_correct"]) == (1.0, 1.0, 1.0, True)
    assert caption_attributes(short_caption(scene), scene)["size_f1"] is None
    assert caption_attributes(long_caption(scene), scene)["size_f1"] == 1.0

    single = Scene((obj("circle", "red", 4),))
    m = caption_attributes("a blue circle", single)
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0)

    m = caption_attributes("a red circle and a blue square", single)  # an extra object
    assert (m["precision"], m["recall"], m["count_correct"]) == (0.5, 1.0, False)

    m = caption_attributes("a small red circle", single)  # right color and shape, wrong size
    assert (m["f1"], m["size_f1"]) == (1.0, 0.0)


def test_caption_places_score_the_spatial_layout():
    scene = Scene((obj("circle", "red", 0, "small"), obj("square", "blue", 4)))
    assert caption_attributes(long_caption(scene), scene)["place_f1"] == 1.0
    m = caption_attributes("a small red circle at the top and a large blue square in the center", scene)
    assert (m["place_precision"], m["place_recall"]) == (0.5, 0.5)  # the circle is at the top left
    assert caption_attributes("a red circle at the top left", scene)["place_precision"] == 1.0
    assert caption_attributes(short_caption(scene), scene)["place_f1"] == 0.0  # no place said


def test_position_is_read_from_centres_with_a_margin():
    s = spec("position", "...", (1, "red", "circle"), (1, "blue", "square"), relation="left of")
    circle = ShapeObject("circle", "red", "small", 20.0, 10.0, 8.0)
    square = lambda x, y: ShapeObject("square", "blue", "small", x, y, 8.0)  # noqa: E731
    assert score([circle, square(26.0, 40.0)], s)  # 6 px further right, whatever the height
    assert not score([circle, square(25.5, 40.0)], s)  # 5.5 px: too close to call
