"""The Shapes world: the embedded data set, generated in-process from a seed.

A scene is 1–5 flat objects (a circle, square or triangle in one of eight named colors, small or
large) anywhere on a 48 px image. Within its name each object varies: its extent (8–10.5 px small,
14–18 px large), its exact shade, an optional darker outline; the background is a plain light tint
that varies from image to image. Objects never overlap and keep a gap, and relations are read from
centres with a margin, so that "left of" or "above" is never a matter of a pixel. Everything a
training stage needs comes from the scene: a rendered image, captions in several phrasings (counts,
relations, attributes), one-word question–answer pairs and a text passage.

The package has a module for each part: `scene` (what a scene is and how one is drawn at random,
its split), `drawing` (its pixels), `texts` (what is said about it) and `judge` (an image read
back into objects); this module makes a split's examples from them.

The judge turns an image back into objects (`parse`). That parser is the judge of generated
images (GenEval-style scoring) and of generated captions (`caption_objects`): it finds each object
as a connected region that stands out from the background, names its color by the nearest palette
entry, its shape by the template that overlaps it best and its size by its extent, and rejects
blobs that look like none of them (smears of color, blends of two objects).
"""

from __future__ import annotations

import random

from ugen.example import Example, Texts
from ugen.shapes.drawing import coverage, render
from ugen.shapes.judge import (
    MATCH_DISTANCE,
    BlobMeasures,
    background_of,
    match_count,
    measure,
    parse,
    scene_matches,
)
from ugen.shapes.scene import (
    BACKGROUND,
    COLORS,
    IMAGE_SIZE,
    NUMBER_WORDS,
    PLACE_PHRASES,
    POSITIONS,
    RELATIONS,
    SHAPES,
    SIZE_RANGE,
    SIZES,
    SPLITS,
    Scene,
    ShapeObject,
    above,
    left_of,
    place,
    sample_scene,
    split_of,
)
from ugen.shapes.texts import (
    LAYOUT_STEPS,
    caption_objects,
    captions,
    layout,
    long_caption,
    passage,
    questions,
    relation_caption,
    short_caption,
)

__all__ = [
    "BACKGROUND", "COLORS", "IMAGE_SIZE", "LAYOUT_STEPS", "MATCH_DISTANCE", "NUMBER_WORDS", "PLACE_PHRASES", "POSITIONS", "RELATIONS",
    "SHAPES", "SIZES", "SIZE_RANGE", "SPLITS", "BlobMeasures", "Scene", "ShapeObject", "above", "background_of",
    "caption_objects", "captions", "coverage", "layout", "left_of", "long_caption", "make_examples", "make_texts", "match_count",
    "measure", "parse", "passage", "place", "questions", "relation_caption", "render", "sample_scene", "scene_matches",
    "short_caption", "split_of",
]


def make_texts(split: str, n: int, seed: int = 0) -> list[tuple[Scene, Texts]]:
    """n scenes of one split with their texts, the same for the same (seed, split): scenes are drawn
    from one seeded stream and those of other splits skipped. No image is rendered: the caller
    renders a scene when it needs its pixels (`render`), so a large split costs no image memory."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(f"{seed}-{split}")
    out = []
    while len(out) < n:
        scene = sample_scene(rng)
        if split_of(scene) != split:
            continue
        caption, prompts = captions(scene, rng)
        out.append((scene, Texts(caption=caption, prompts=prompts, qa=questions(scene, rng), passage=passage(scene, rng),
                                 layout=layout(scene))))
    return out


def make_examples(split: str, n: int, seed: int = 0, image_size: int = IMAGE_SIZE) -> list[Example]:
    """`make_texts` with each scene rendered at `image_size`: a small set held in memory (the eval's)."""
    return [Example.of(render(scene, image_size), t, scene) for scene, t in make_texts(split, n, seed)]
