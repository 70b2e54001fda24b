"""Invariants of the Shapes world: determinism, disjoint splits, an exact parser, true texts."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from ugen import shapes as S
from ugen.data import Example


def _degrade(image: np.ndarray, rng: np.random.Generator, sigma: float = 8.0) -> np.ndarray:
    """A 3×3 box blur then Gaussian noise: a stand-in for a VQ reconstruction's soft edges."""
    x = image.astype(np.float32)
    h, w, _ = x.shape
    padded = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
    x = sum(padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)) / 9
    x = x + rng.normal(0.0, sigma, x.shape)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _parse_accuracy(scenes, images) -> tuple[float, Counter]:
    """Fraction of objects found exactly, and a tally of what went wrong otherwise."""
    total = exact = 0
    failures: Counter = Counter()
    for scene, image in zip(scenes, images):
        found = {o.cell: o for o in S.parse(image)}
        for obj in scene.objects:
            total += 1
            got = found.pop(obj.cell, None)
            if got == obj:
                exact += 1
            elif got is None:
                failures["missing"] += 1
            else:
                for attr in ("shape", "color", "size"):
                    if getattr(got, attr) != getattr(obj, attr):
                        failures[f"{attr} {getattr(obj, attr)}->{getattr(got, attr)}"] += 1
        failures["extra"] += len(found)
    return exact / total, failures


def _scenes(n: int, seed: int) -> list[S.Scene]:
    rng = random.Random(seed)
    return [S.sample_scene(rng) for _ in range(n)]


# --- world --------------------------------------------------------------------------------------


def test_world_constants():
    assert len(S.COLORS) == 8 and len(S.POSITIONS) == 9
    palette = np.array(list(S.COLORS.values()), dtype=float)
    closest = min(np.linalg.norm(a - b) for a, b in itertools.combinations(palette, 2))
    assert closest > 60, "palette colors too close for a robust nearest-color match"


def test_scene_sorted_and_key():
    a = S.ShapeObject("circle", "red", "large", 4)
    b = S.ShapeObject("square", "blue", "small", 0)
    scene = S.Scene((a, b))
    assert [o.cell for o in scene.objects] == [0, 4]
    assert scene.key() == S.Scene((b, a)).key()
    assert scene.key() != S.Scene((a,)).key()
    assert a.position == "center" and a.center == (24.0, 24.0) and (a.row, a.col) == (1, 1)
    assert b.phrase() == "small blue square"
    with pytest.raises(ValueError):
        S.Scene((a, S.ShapeObject("square", "blue", "small", 4)))


def test_sample_scene_counts():
    rng = random.Random(0)
    counts = Counter(len(S.sample_scene(rng).objects) for _ in range(4000))
    assert set(counts) == {1, 2, 3, 4}
    assert counts[1] > counts[2] > counts[3] > counts[4]
    assert abs(counts[1] / 4000 - 0.4) < 0.04
    assert len(S.sample_scene(rng, num_objects=3).objects) == 3


def test_render_shape_and_background():
    scene = S.Scene((S.ShapeObject("circle", "red", "small", 4),))
    image = S.render(scene)
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    assert tuple(image[0, 0]) == S.BACKGROUND
    assert tuple(image[24, 24]) == S.COLORS["red"]
    assert S.render(scene, 96).shape == (96, 96, 3)


# --- examples and splits --------------------------------------------------------------------------


def test_make_examples_deterministic():
    a = S.make_examples("train", 20, seed=1)
    b = S.make_examples("train", 20, seed=1)
    c = S.make_examples("train", 20, seed=2)
    assert all(isinstance(e, Example) for e in a)
    assert [e.scene for e in a] == [e.scene for e in b]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    assert [(e.caption, e.qa, e.passage) for e in a] == [(e.caption, e.qa, e.passage) for e in b]
    assert [e.scene for e in a] != [e.scene for e in c]
    e = a[0]
    assert e.caption == S.long_caption(e.scene)
    assert e.prompts == [S.short_caption(e.scene), S.long_caption(e.scene)]
    assert e.qa and e.passage
    assert S.make_examples("test", 2, image_size=96)[0].image.shape == (96, 96, 3)


def test_splits_disjoint():
    keys = {split: {e.scene.key() for e in S.make_examples(split, n, seed=0)}
            for split, n in (("train", 2000), ("validation", 200), ("test", 200))}
    assert not keys["train"] & keys["validation"]
    assert not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]
    scenes = _scenes(4000, seed=5)
    shares = Counter(S.split_of(s) for s in scenes)
    assert 0.86 < shares["train"] / 4000 < 0.94


def test_make_examples_bad_split():
    with pytest.raises(ValueError):
        S.make_examples("dev", 1)


# --- parser -----------------------------------------------------------------------------------


def test_parse_clean_random_scenes():
    scenes = _scenes(1000, seed=11)
    accuracy, failures = _parse_accuracy(scenes, [S.render(s) for s in scenes])
    assert accuracy >= 0.99, f"clean parse accuracy {accuracy:.4f}, failures {dict(failures)}"


def test_parse_every_single_object():
    wrong = []
    for shape, color, size, cell in itertools.product(S.SHAPES, S.COLORS, S.SIZES, range(9)):
        obj = S.ShapeObject(shape, color, size, cell)
        found = S.parse(S.render(S.Scene((obj,))))
        if found != [obj]:
            wrong.append((obj, found))
    assert not wrong, f"{len(wrong)} single objects misparsed, e.g. {wrong[:3]}"


def test_parse_blank_finds_nothing():
    blank = np.full((48, 48, 3), S.BACKGROUND, dtype=np.uint8)
    assert S.parse(blank) == []
    noisy = _degrade(blank, np.random.default_rng(0))
    assert S.parse(noisy) == []


def test_parse_smeared_colors_finds_nothing():
    """Blurred blocks of mixed palette colors (what random VQ codes decode to) are no objects: the
    old parser, which took the best-fitting shape of any blob, read 418 objects in these 50."""
    rng = np.random.default_rng(0)
    palette = np.array(list(S.COLORS.values()), dtype=np.float32)
    found = 0
    for _ in range(50):
        blocks = palette[rng.integers(0, 8, (12, 12))]  # (12, 12, 3)
        mix = rng.random((12, 12, 1))
        smear = (blocks * mix + np.array(S.BACKGROUND) * (1 - mix)).repeat(4, 0).repeat(4, 1)  # (48, 48, 3)
        padded = np.pad(smear, ((1, 1), (1, 1), (0, 0)), mode="edge")
        smear = sum(padded[dy:dy + 48, dx:dx + 48] for dy in range(3) for dx in range(3)) / 9
        found += len(S.parse(smear.astype(np.uint8)))
    assert found == 0


def test_parse_degraded():
    scenes = _scenes(300, seed=12)
    rng = np.random.default_rng(0)
    accuracy, failures = _parse_accuracy(scenes, [_degrade(S.render(s), rng) for s in scenes])
    assert accuracy >= 0.95, f"degraded parse accuracy {accuracy:.4f}, failures {dict(failures)}"


def test_parse_other_sizes_and_pil():
    scenes = _scenes(100, seed=13)
    for size in (96, 64):
        accuracy, failures = _parse_accuracy(scenes, [S.render(s, size) for s in scenes])
        assert accuracy >= 0.99, f"size {size}: accuracy {accuracy:.4f}, {dict(failures)}"
    scene = scenes[0]
    assert S.parse(Image.fromarray(S.render(scene, 96))) == list(scene.objects)


def test_scene_matches():
    scene = S.Scene((S.ShapeObject("circle", "red", "large", 0),
                     S.ShapeObject("square", "blue", "small", 4)))
    found = list(scene.objects)
    assert S.scene_matches(found, scene)
    moved = [S.ShapeObject("circle", "red", "large", 1), found[1]]
    assert not S.scene_matches(moved, scene)
    assert S.scene_matches(moved, scene, check=("shape", "color", "size"))
    assert not S.scene_matches(found[:1], scene)


# --- texts ------------------------------------------------------------------------------------


def test_caption_examples():
    red = S.ShapeObject("circle", "red", "large", 0)
    scene = S.Scene((red, S.ShapeObject("square", "blue", "small", 4)))
    assert S.short_caption(S.Scene((red,))) == "a red circle"
    assert S.short_caption(scene) == "a red circle and a blue square"
    assert S.long_caption(scene) == (
        "a large red circle at the top left and a small blue square in the center")
    two = S.Scene((red, S.ShapeObject("circle", "red", "small", 2),
                   S.ShapeObject("triangle", "orange", "small", 3)))
    assert S.short_caption(two) == "two red circles and an orange triangle"
    assert S.long_caption(two).endswith("and a small orange triangle on the left")


def test_captions_round_trip():
    for scene in _scenes(500, seed=14):
        colors_shapes = Counter((o.color, o.shape) for o in scene.objects)
        short = S.caption_objects(S.short_caption(scene))
        assert Counter((c, s) for _, c, s in short) == colors_shapes, S.short_caption(scene)
        long = S.long_caption(scene)
        assert Counter(S.caption_objects(long)) == Counter(
            (o.size, o.color, o.shape) for o in scene.objects), long
        for o in scene.objects:
            assert f"{o.phrase()} {S.PLACE_PHRASES[o.position]}" in long


def test_caption_objects_ignores_unknown_words():
    assert S.caption_objects("Two small red circles, and a big blue square!") == [
        ("small", "red", "circle"), ("small", "red", "circle"), (None, "blue", "square")]
    assert S.caption_objects("there are two objects: a green triangle") == [
        (None, "green", "triangle")]
    assert S.caption_objects("a shiny circle") == []


def _check_answer(scene: S.Scene, question: str, answer: str, qtype: str) -> None:
    """Recompute the answer from the scene for the question forms that name their subject."""
    objs = scene.objects
    if question == "how many objects are there?":
        assert answer == S.NUMBER_WORDS[len(objs)]
    elif qtype == "count":
        color = question.split()[2]
        assert answer == S.NUMBER_WORDS[sum(o.color == color for o in objs)]
    elif qtype == "color":
        shape = question.removeprefix("what color is the ").removesuffix("?")
        (obj,) = [o for o in objs if o.shape == shape]
        assert answer == obj.color
    elif qtype == "shape":
        color = question.split()[4]
        (obj,) = [o for o in objs if o.color == color]
        assert answer == obj.shape
    elif qtype == "color_at":
        place = question.removeprefix("what color is the object ").removesuffix("?")
        (obj,) = [o for o in objs if S.PLACE_PHRASES[o.position] == place]
        assert answer == obj.color
    elif qtype == "small_color":
        (obj,) = [o for o in objs if o.size == "small"]
        assert answer == obj.color
    elif qtype == "small_present":
        assert answer == ("yes" if any(o.size == "small" for o in objs) else "no")
    elif qtype == "exist":
        color, shape = question.removesuffix("?").split()[-2:]
        present = any((o.color, o.shape) == (color, shape) for o in objs)
        assert answer == ("yes" if present else "no")
    elif qtype == "spatial":
        refs = {v: k for k, v in S._references(scene).items()}
        body = question.removeprefix("is ").removesuffix("?")
        (a, words, b), = [(a, w, b) for a in refs for w, _ in S.RELATIONS for b in refs
                          if body == f"{a} {w} {b}"]
        holds = dict(S.RELATIONS)[words]
        assert answer == ("yes" if holds(refs[a], refs[b]) else "no")
    else:
        raise AssertionError(f"unknown qtype {qtype}")


def test_questions_correct():
    rng = random.Random(0)
    seen = Counter()
    for scene in _scenes(500, seed=15):
        qa = S.questions(scene, rng)
        assert 5 <= len(qa) <= 12
        for question, answer, qtype in qa:
            assert question == question.lower() and question.endswith("?")
            assert len(answer.split()) == 1
            _check_answer(scene, question, answer, qtype)
            seen[(qtype, answer in ("yes", "no") and answer)] += 1
    for qtype in ("count", "color", "shape", "small_color", "small_present", "color_at", "exist"):
        assert any(k[0] == qtype for k in seen), qtype
    assert seen[("spatial", "yes")] and seen[("spatial", "no")]


def test_passage_mentions_every_object():
    rng = random.Random(0)
    for scene in _scenes(200, seed=16):
        text = S.passage(scene, rng)
        assert text[0].isupper() and text.endswith(".")
        for o in scene.objects:
            assert o.phrase() in text and S.PLACE_PHRASES[o.position] in text.lower()
