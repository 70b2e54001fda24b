"""Invariants of the Shapes world: free layouts that keep their gaps, antialiased renders checked
by hand, determinism, disjoint splits, a parser exact on clean renders (and on another program's
drawings), true texts."""

from __future__ import annotations

import itertools
import random
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ugen import shapes as S
from ugen.shapes import scene as SC  # the world's private rules and constants
from ugen.shapes import texts as T
from ugen.data import Example

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "eval"), str(ROOT / "benchmarks")]  # script folders, not packages
from judge import degrade as _degrade, smears  # noqa: E402  (a 3×3 box blur then noise: a decoder's soft edges)
from pil_shapes import draw_single_shapes  # noqa: E402


def _parse_accuracy(scenes, images) -> tuple[float, Counter]:
    """Fraction of objects found (same shape, color and size, centre within MATCH_DISTANCE), and a
    tally of what went wrong otherwise (judged against the nearest found object)."""
    total = exact = 0
    failures: Counter = Counter()
    for scene, image in zip(scenes, images):
        found = S.parse(image)
        total += len(scene.objects)
        exact += S.match_count(found, scene.objects)
        for obj in scene.objects:
            near = min(found, key=lambda f: np.hypot(f.x - obj.x, f.y - obj.y), default=None)
            if near is None or np.hypot(near.x - obj.x, near.y - obj.y) > S.MATCH_DISTANCE:
                failures["missing"] += 1
                continue
            for attr in ("shape", "color", "size"):
                if getattr(near, attr) != getattr(obj, attr):
                    failures[f"{attr} {getattr(obj, attr)}->{getattr(near, attr)}"] += 1
        failures["extra"] += max(0, len(found) - len(scene.objects))
    return exact / total, failures


def _scenes(n: int, seed: int) -> list[S.Scene]:
    rng = random.Random(seed)
    return [S.sample_scene(rng) for _ in range(n)]


def _obj(shape="circle", color="red", size="large", x=24.0, y=24.0, extent=None, **kw) -> S.ShapeObject:
    return S.ShapeObject(shape, color, size, x, y, extent or (15.0 if size == "large" else 8.0), **kw)


# --- world --------------------------------------------------------------------------------------


def test_world_constants():
    assert len(S.COLORS) == 8 and len(S.POSITIONS) == 9
    palette = np.array(list(S.COLORS.values()), dtype=float)
    closest = min(np.linalg.norm(a - b) for a, b in itertools.combinations(palette, 2))
    # The farthest a shade strays (SHADE_JITTER on each channel) stays under half the closest pair.
    assert closest / 2 > np.sqrt(3) * SC.SHADE_JITTER, "shades could cross to another color's nearest entry"
    assert S.SIZE_RANGE["small"][1] < SC.SIZE_SPLIT < S.SIZE_RANGE["large"][0]


def test_places_and_relations_by_hand():
    # Thirds of 48 px end at 16 and 32; within REGION_MARGIN (3 px) of either a place has no name.
    assert _obj(x=8, y=8).position == "top left"
    assert _obj(x=24, y=40).position == "bottom"
    assert _obj(x=14, y=24).position is None and _obj(x=24, y=33.5).position is None
    assert _obj(x=12.9, y=24).position == "left"
    a, b = _obj(x=10, y=30), _obj(x=16, y=10)  # 6 px apart across, 20 up
    assert S.left_of(a, b) and not S.left_of(b, a) and S.above(b, a) and not S.above(a, b)
    assert not S.left_of(a, _obj(x=15.9, y=10))  # 5.9 px: too close to call
    words = {w for w, holds in S.RELATIONS if holds(a, b)}
    assert words == {"to the left of", "below"}


def test_scene_order_and_key():
    a, b = _obj(x=30, y=10), _obj("square", "blue", "small", x=10, y=30)
    scene = S.Scene((b, a))
    assert scene.objects == (a, b)  # reading order: top first
    assert scene.key() == S.Scene((a, b)).key() != S.Scene((a,)).key()
    assert b.phrase() == "small blue square"
    with pytest.raises(ValueError):
        _obj("hexagon")


def test_sample_scene_layouts_keep_their_gaps():
    rng = random.Random(0)
    scenes = [S.sample_scene(rng) for _ in range(2000)]
    counts = Counter(len(s.objects) for s in scenes)
    assert set(counts) == {1, 2, 3, 4, 5}
    # Group scenes give counting its examples: four objects of one shape.
    assert sum(max(Counter(o.shape for o in s.objects).values()) == 4 for s in scenes) > 40
    for scene in scenes:
        for o in scene.objects:
            x0, y0, x1, y1 = o.box
            assert min(x0, y0) >= SC.BORDER - 1e-9 and max(x1, y1) <= S.IMAGE_SIZE - SC.BORDER + 1e-9
            low, high = S.SIZE_RANGE[o.size]
            assert low <= o.extent <= high
            assert np.abs(np.array(o.fill) - S.COLORS[o.color]).max() <= SC.SHADE_JITTER
        for p, q in itertools.combinations(scene.objects, 2):
            assert SC._boxes_apart(p.box, q.box, SC.GAP)
    assert {s.background for s in scenes} - {S.BACKGROUND}  # some scenes have another tint
    assert len(S.sample_scene(rng, num_objects=3).objects) == 3


def test_render_by_hand():
    fill = (200, 50, 60)
    # A square from 19 to 29 px covers pixels 19..28 whole: fill there, background next to it.
    image = S.render(S.Scene((_obj("square", x=24, y=24, extent=10, shade=fill),)))
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    assert tuple(image[19, 19]) == tuple(image[28, 28]) == fill
    assert tuple(image[18, 24]) == tuple(image[24, 29]) == S.BACKGROUND
    # From 19.5 to 28.5: the edge pixels are half covered, the corner pixel a quarter.
    image = S.render(S.Scene((_obj("square", x=24, y=24, extent=9, shade=fill),), background=(240, 240, 240)))
    half = tuple(round((240 + c) / 2) for c in fill)
    assert tuple(image[19, 24]) == half and tuple(image[24, 28]) == half
    assert tuple(image[19, 19]) == tuple(round(0.75 * 240 + 0.25 * c) for c in fill)
    # An outline: the outer pixel ring in the darker shade, the fill inside it.
    image = S.render(S.Scene((_obj("square", x=24, y=24, extent=10, shade=fill, outline=True),)))
    dark = tuple(round(c * SC.OUTLINE_DARKEN) for c in fill)
    assert tuple(image[19, 24]) == dark and tuple(image[20, 24]) == fill
    # A triangle, apex up: the base row is full, the row under the apex is not.
    image = S.render(S.Scene((_obj("triangle", x=24, y=24, extent=10, shade=fill),)))
    assert tuple(image[28, 20]) == fill and tuple(image[19, 20]) == S.BACKGROUND
    assert S.render(S.Scene((_obj(),)), 96).shape == (96, 96, 3)


# --- examples and splits --------------------------------------------------------------------------


def test_make_examples_deterministic():
    a = S.make_examples("train", 20, seed=1)
    b = S.make_examples("train", 20, seed=1)
    c = S.make_examples("train", 20, seed=2)
    assert all(isinstance(e, Example) for e in a)
    assert [e.scene for e in a] == [e.scene for e in b]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    assert [(e.caption, e.prompts, e.qa, e.passage) for e in a] == [(e.caption, e.prompts, e.qa, e.passage) for e in b]
    assert [e.scene for e in a] != [e.scene for e in c]
    for e in a:
        assert e.caption == e.prompts[0] and S.short_caption(e.scene) in e.prompts
        assert e.qa and e.passage
    assert len({e.caption.split()[1] if len(e.caption.split()) > 1 else "" for e in S.make_examples("train", 200)}) > 5
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


def test_parse_every_kind_of_single_object():
    rng = random.Random(3)
    wrong = []
    for shape, color, size, outline in itertools.product(S.SHAPES, S.COLORS, S.SIZES, (False, True)):
        for _ in range(3):
            (obj,) = S.place(rng, [(shape, color, size)])
            obj = S.ShapeObject(shape, color, size, obj.x, obj.y, obj.extent, obj.fill, outline)
            found = S.parse(S.render(S.Scene((obj,))))
            if not (len(found) == 1 and S.match_count(found, [obj]) == 1):
                wrong.append((obj, found))
    assert not wrong, f"{len(wrong)} single objects misparsed, e.g. {wrong[:3]}"


def test_parse_reads_place_and_extent():
    obj = _obj("triangle", "green", "large", x=17.3, y=30.6, extent=14.2)
    (found,) = S.parse(S.render(S.Scene((obj,))))
    assert abs(found.x - obj.x) < 0.5 and abs(found.y - obj.y) < 0.5 and abs(found.extent - obj.extent) < 0.5


def test_parse_another_programs_drawings():
    """Single shapes drawn by PIL's own primitives (eval/pil_shapes.py, not ugen's renderer), in
    shades, sizes, places and backgrounds of their own: the judge reads them too."""
    drawn = draw_single_shapes(300, seed=1)
    right = sum([(o.shape, o.color) for o in S.parse(image)] == [(shape, color)] for image, shape, color in drawn)
    assert right / len(drawn) >= 0.98, right / len(drawn)


def test_parse_blank_finds_nothing():
    blank = np.full((48, 48, 3), S.BACKGROUND, dtype=np.uint8)
    assert S.parse(blank) == []
    noisy = _degrade(blank, np.random.default_rng(0))
    assert S.parse(noisy) == []


def test_parse_smeared_colors_finds_nothing():
    """Blurred blocks of mixed palette colors (what random VQ codes decode to) are no objects."""
    found = sum(len(S.parse(smear)) for smear in smears(50, np.random.default_rng(0)))
    assert found <= 5


def test_parse_degraded():
    scenes = _scenes(300, seed=12)
    rng = np.random.default_rng(0)
    accuracy, failures = _parse_accuracy(scenes, [_degrade(S.render(s), rng) for s in scenes])
    assert accuracy >= 0.97, f"degraded parse accuracy {accuracy:.4f}, failures {dict(failures)}"


def test_parse_other_sizes_and_pil():
    scenes = _scenes(100, seed=13)
    for size in (96, 64):
        accuracy, failures = _parse_accuracy(scenes, [S.render(s, size) for s in scenes])
        assert accuracy >= 0.99, f"size {size}: accuracy {accuracy:.4f}, {dict(failures)}"
    scene = next(s for s in scenes if len(s.objects) == 3)
    assert S.scene_matches(S.parse(Image.fromarray(S.render(scene, 96))), scene)


def test_match_count_and_scene_matches():
    a, b = _obj(x=10, y=10), _obj("square", "blue", "small", x=30, y=30)
    scene = S.Scene((a, b))
    assert S.scene_matches([a, b], scene)
    near = _obj(x=12, y=12)  # 2.8 px away
    far = _obj(x=12.5, y=12)  # 3.2 px away
    assert S.match_count([near, b], scene.objects) == 2 and S.match_count([far, b], scene.objects) == 1
    assert S.match_count([far, b], scene.objects, check=("shape", "color", "size")) == 2
    assert not S.scene_matches([a], scene)
    # Nearest pairs first: the found object at (10, 10) goes to a, not to the twin 3 px off.
    twin = _obj(x=10, y=13)
    assert S.match_count([_obj(x=10, y=10), _obj(x=10, y=16)], [a, twin]) == 2


# --- texts ------------------------------------------------------------------------------------


def test_caption_examples():
    red = _obj(x=8, y=8)
    blue = _obj("square", "blue", "small", x=24, y=24)
    scene = S.Scene((red, blue))
    assert S.short_caption(S.Scene((red,))) == "a red circle"
    assert S.short_caption(scene) == "a red circle and a blue square"
    assert S.long_caption(scene) == "a large red circle at the top left and a small blue square in the center"
    two = S.Scene((red, _obj(size="small", x=40, y=8), _obj("triangle", "orange", "small", x=15, y=40)))
    assert S.short_caption(two) == "two red circles and an orange triangle"
    assert S.long_caption(two).endswith("and a small orange triangle")  # x=15: too near a third to name
    assert T._grouped(two.objects, color=False) == "two circles and a triangle"
    assert S.relation_caption(S.Scene((red, blue)), random.Random(0)) in (
        "a red circle to the left of a blue square", "a red circle above a blue square",
        "a blue square to the right of a red circle", "a blue square below a red circle")


def test_captions_round_trip():
    rng = random.Random(1)
    for scene in _scenes(500, seed=14):
        colors_shapes = Counter((o.color, o.shape) for o in scene.objects)
        target, prompts = S.captions(scene, rng)
        for text in (target, S.short_caption(scene), S.long_caption(scene), T._grouped(scene.objects, size=True)):
            assert Counter((c, s) for _, c, s in S.caption_objects(text)) == colors_shapes, text
        long = S.long_caption(scene)
        assert Counter(S.caption_objects(long)) == Counter(o.kind() for o in scene.objects), long
        for o in scene.objects:
            if o.position:
                assert f"{o.phrase()} {S.PLACE_PHRASES[o.position]}" in long
        relation = S.relation_caption(scene, random.Random(0))
        if relation:  # "<a> <relation> <b>[ and <c>]": some objects named a and b stand in it
            (words,) = [w for w, _ in S.RELATIONS if f" {w} " in relation]
            first, rest = relation.split(f" {words} ")
            (_, ca, sa), (_, cb, sb) = S.caption_objects(first)[0], S.caption_objects(rest)[0]
            holds = dict(S.RELATIONS)[words]
            assert any(holds(a, b) for a in scene.objects for b in scene.objects
                       if (a.color, a.shape) == (ca, sa) and (b.color, b.shape) == (cb, sb) and a is not b), relation


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
    elif qtype == "count_shape":
        shape = question.split()[2].removesuffix("s")
        assert answer == S.NUMBER_WORDS[sum(o.shape == shape for o in objs)]
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
        (obj,) = [o for o in objs if o.position and S.PLACE_PHRASES[o.position] == place]
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
        refs = {v: k for k, v in T._references(scene).items()}
        body = question.removeprefix("is ").removesuffix("?")
        (a, words, b), = [(a, w, b) for a in refs for w, _ in S.RELATIONS for b in refs
                          if body == f"{a} {w} {b}"]
        a, b = refs[a], refs[b]
        # Centres: x grows to the right, y downwards; a near tie is never asked.
        dx, dy = b.x - a.x, b.y - a.y
        along = {"to the left of": dx, "to the right of": -dx, "above": dy, "below": -dy}[words]
        assert abs(along) >= SC.RELATION_MARGIN
        assert answer == ("yes" if along > 0 else "no")
    else:
        raise AssertionError(f"unknown qtype {qtype}")


def test_questions_correct():
    rng = random.Random(0)
    seen = Counter()
    for scene in _scenes(500, seed=15):
        qa = S.questions(scene, rng)
        assert 5 <= len(qa) <= 13
        for question, answer, qtype in qa:
            assert question == question.lower() and question.endswith("?")
            assert len(answer.split()) == 1
            _check_answer(scene, question, answer, qtype)
            seen[(qtype, answer in ("yes", "no") and answer)] += 1
    for qtype in ("count", "count_shape", "color", "shape", "small_color", "small_present", "color_at", "exist"):
        assert any(k[0] == qtype for k in seen), qtype
    assert seen[("spatial", "yes")] and seen[("spatial", "no")]


def test_passage_mentions_every_object():
    rng = random.Random(0)
    for scene in _scenes(200, seed=16):
        text = S.passage(scene, rng)
        assert text[0].isupper() and text.endswith(".")
        for o in scene.objects:
            assert o.phrase() in text
            if o.position:
                assert S.PLACE_PHRASES[o.position] in text.lower()


def test_the_layout_lists_objects_in_drawing_order_with_their_places():
    """Centres on a 12-step lattice (4 px a step at 48 px), top to bottom then left to right."""
    a = _obj("circle", "red", "large", x=40.0, y=30.0, extent=15.0)  # steps 10, 7
    b = _obj("square", "blue", "small", x=5.0, y=30.5, extent=9.0)  # steps 1, 7: same row as a, further left
    c = _obj("triangle", "green", "small", x=20.0, y=3.9, extent=9.0)  # steps 5, 0
    assert S.layout(S.Scene((a, b, c))) == "small green triangle 5 0; small blue square 1 7; large red circle 10 7"
    scene, texts = S.make_texts("validation", 1)[0]
    assert texts.layout == S.layout(scene)
