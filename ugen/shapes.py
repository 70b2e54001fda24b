"""The Shapes world: the embedded data set, generated in-process from a seed.

A scene is 1–5 flat objects (a circle, square or triangle in one of eight named colors, small or
large) anywhere on a 48 px image. Within its name each object varies: its extent (8–10.5 px small,
14–18 px large), its exact shade, an optional darker outline; the background is a plain light tint
that varies from image to image. Objects never overlap and keep a gap, and relations are read from
centres with a margin, so that "left of" or "above" is never a matter of a pixel. Everything a
training stage needs comes from the scene: a rendered image, captions in several phrasings (counts,
relations, attributes), one-word question–answer pairs and a text passage.

The same module turns an image back into objects (`parse`). That parser is the judge of generated
images (GenEval-style scoring) and of generated captions (`caption_objects`): it finds each object
as a connected region that stands out from the background, names its color by the nearest palette
entry, its shape by the template that overlaps it best and its size by its extent, and rejects
blobs that look like none of them (smears of color, blends of two objects).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from PIL import Image

from ugen.data.sources import Example, Texts

IMAGE_SIZE = 48
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
# Extent (the side of the object's bounding box) in pixels at 48 px, drawn uniformly from the
# range. The gap between the ranges keeps "small" and "large" apart for the parser even after a
# VQ reconstruction's blur, which moves a measured extent by about a pixel.
SIZE_RANGE = {"small": (8.0, 10.5), "large": (14.0, 18.0)}
SIZE_SPLIT = 12.0  # a parsed extent below this is small
# Hues a person names the same way; the closest pair (orange, yellow) is ~80 RGB apart, so that
# a shade (up to SHADE_JITTER a channel, at most ~28 away) and a VQ reconstruction's color shift
# do not flip the nearest palette entry.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (240, 130, 20),
    "yellow": (240, 210, 30),
    "green": (40, 160, 60),
    "blue": (40, 90, 220),
    "purple": (140, 60, 190),
    "pink": (240, 120, 190),
    "brown": (120, 75, 35),
}
SHADE_JITTER = 16  # each channel of an object's fill is its color's +- this
OUTLINE_SHARE = 0.25  # objects drawn with a 1 px outline of a darker shade
OUTLINE_DARKEN = 0.75  # the outline's shade: the fill times this
BACKGROUND = (245, 245, 240)  # the default background; a scene may have another light tint
BACKGROUND_RANGE = (226, 252)  # each channel of a varied background
BORDER = 2.0  # px between an object's box and the image edge
GAP = 4.0  # px between two objects' boxes (along x or y)
RELATION_MARGIN = 6.0  # px: "a left of b" when a's centre is this much left of b's
REGION_MARGIN = 3.0  # px: a centre this close to a third's boundary has no region name
NUM_OBJECTS_WEIGHTS = {1: 0.35, 2: 0.3, 3: 0.2, 4: 0.1, 5: 0.05}
GROUP_SHARE = 0.3  # scenes built around 2–4 objects of one shape (counting needs them)
SPLITS = ("train", "validation", "test")

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# The image in thirds: a centre well inside one third of each axis has a region name.
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
# How each region reads after a noun: "a red circle at the top left", "on the left".
PLACE_PHRASES = {
    "top left": "at the top left",
    "top": "at the top",
    "top right": "at the top right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "at the bottom left",
    "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}


@dataclass(frozen=True)
class ShapeObject:
    """One object: what it is called (shape, color, size) and how it is drawn: centre (x, y) and
    extent in pixels at 48 px, fill shade (RGB) and outline. A parsed object carries what the
    parser measured (its shade is the fill's median, its outline unknown: False)."""

    shape: str
    color: str
    size: str
    x: float
    y: float
    extent: float
    shade: tuple[int, int, int] | None = None  # None: the color's own RGB
    outline: bool = False

    def __post_init__(self) -> None:
        if self.shape not in SHAPES or self.color not in COLORS or self.size not in SIZES:
            raise ValueError(f"unknown object attributes: {self}")

    @property
    def fill(self) -> tuple[int, int, int]:
        return self.shade if self.shade is not None else COLORS[self.color]

    @property
    def box(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the bounding box, in pixels."""
        h = self.extent / 2
        return (self.x - h, self.y - h, self.x + h, self.y + h)

    @property
    def position(self) -> str | None:
        """The region name ('top left', 'center', ...) when the centre is well inside one third
        of each axis, else None (a place too close to call)."""
        third = IMAGE_SIZE / 3

        def index(v: float) -> int | None:
            i = min(2, int(v // third))
            edges = [third * k for k in (1, 2)]
            return None if any(abs(v - e) < REGION_MARGIN for e in edges) else i

        row, col = index(self.y), index(self.x)
        return None if row is None or col is None else POSITIONS[3 * row + col]

    def phrase(self) -> str:
        """'small red circle'."""
        return f"{self.size} {self.color} {self.shape}"

    def kind(self) -> tuple[str, str, str]:
        return (self.size, self.color, self.shape)


def left_of(a: ShapeObject, b: ShapeObject) -> bool:
    return a.x + RELATION_MARGIN <= b.x


def above(a: ShapeObject, b: ShapeObject) -> bool:
    return a.y + RELATION_MARGIN <= b.y


# The four relations as (wording, test on (a, b)), read from centres with RELATION_MARGIN.
RELATIONS = (
    ("to the left of", left_of),
    ("to the right of", lambda a, b: left_of(b, a)),
    ("above", above),
    ("below", lambda a, b: above(b, a)),
)


@dataclass(frozen=True)
class Scene:
    """The objects of one image in reading order (top to bottom, then left to right) and its
    background."""

    objects: tuple[ShapeObject, ...]
    background: tuple[int, int, int] = BACKGROUND

    def __post_init__(self) -> None:
        objects = tuple(sorted(self.objects, key=lambda o: (round(o.y), o.x)))
        object.__setattr__(self, "objects", objects)

    def key(self) -> str:
        """Canonical string: the same scene always gives the same key, different scenes differ."""
        return "|".join([",".join(map(str, self.background))] + [
            f"{o.shape}:{o.color}:{o.size}:{o.x:.2f}:{o.y:.2f}:{o.extent:.2f}:{o.fill}:{int(o.outline)}"
            for o in self.objects])


def _boxes_apart(a: tuple[float, ...], b: tuple[float, ...], gap: float) -> bool:
    """Whether two boxes (x0, y0, x1, y1) are at least `gap` apart along x or y."""
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def place(rng: random.Random, kinds: list[tuple[str, str, str]], *, test=None, shade: bool = True,
          outline: bool = True, tries: int = 100) -> tuple[ShapeObject, ...] | None:
    """Objects of the given (shape, color, size) kinds, in that order, at random free places, with
    random extents (in the size's range), shades and outlines; `test(objects)` may ask more of the
    layout (a relation). None when no layout was found in `tries` attempts (too many large objects)."""
    order = sorted(range(len(kinds)), key=lambda i: kinds[i][2] != "large")  # the large ones first: they fit less easily
    for _ in range(tries):
        placed: dict[int, ShapeObject] = {}
        boxes: list[tuple[float, float, float, float]] = []
        for i in order:
            shape, color, size = kinds[i]
            extent = rng.uniform(*SIZE_RANGE[size])
            half = extent / 2
            lo, hi = BORDER + half, IMAGE_SIZE - BORDER - half
            fill = tuple(max(0, min(255, c + rng.randint(-SHADE_JITTER, SHADE_JITTER))) for c in COLORS[color]) if shade else None
            lined = outline and rng.random() < OUTLINE_SHARE
            for _ in range(30):
                x, y = rng.uniform(lo, hi), rng.uniform(lo, hi)
                box = (x - half, y - half, x + half, y + half)
                if all(_boxes_apart(box, other, GAP) for other in boxes):
                    placed[i] = ShapeObject(shape, color, size, x, y, extent, fill, lined)
                    boxes.append(box)
                    break
            else:
                break
        objects = tuple(placed[i] for i in sorted(placed))
        if len(objects) == len(kinds) and (test is None or test(objects)):
            return objects
    return None


def _background(rng: random.Random) -> tuple[int, int, int]:
    """Half the scenes keep the default background, half get another light tint."""
    if rng.random() < 0.5:
        return BACKGROUND
    return tuple(rng.randint(*BACKGROUND_RANGE) for _ in range(3))


def sample_scene(rng: random.Random, num_objects: int | None = None) -> Scene:
    """Draw a scene: either a group of 2–4 objects of one shape (often one color) with at most one
    other object, or 1–5 objects of independent kinds; then free places for them."""
    while True:
        if num_objects is None and rng.random() < GROUP_SHARE:
            shape, count = rng.choice(SHAPES), rng.choice((2, 2, 3, 3, 4))
            color = rng.choice(list(COLORS)) if rng.random() < 0.6 else None
            kinds = [(shape, color or rng.choice(list(COLORS)), rng.choice(SIZES)) for _ in range(count)]
            if rng.random() < 0.4:
                kinds.append((rng.choice([s for s in SHAPES if s != shape]), rng.choice(list(COLORS)), rng.choice(SIZES)))
        else:
            n = num_objects
            if n is None:
                counts = list(NUM_OBJECTS_WEIGHTS)
                n = rng.choices(counts, weights=[NUM_OBJECTS_WEIGHTS[c] for c in counts])[0]
            if not 1 <= n <= 5:
                raise ValueError(f"num_objects must be in 1..5, got {n}")
            kinds = [(rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(SIZES)) for _ in range(n)]
        objects = place(rng, kinds)
        if objects is not None:
            return Scene(objects, _background(rng))


# ---------------------------------------------------------------------------------------------
# Rendering: each pixel is covered by an object as measured on a 4x4 grid of points inside it
# (antialiased edges), the same geometry the parser's templates use.

_SUPERSAMPLE = 4


def coverage(shape: str, x: float, y: float, extent: float, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The share (0..1) of each pixel (rows x cols, pixel (i, j) spanning [j, j+1] x [i, i+1]) that a
    shape with centre (x, y) and bounding-box side `extent` covers: (len(rows), len(cols)) float."""
    offsets = (np.arange(_SUPERSAMPLE) + 0.5) / _SUPERSAMPLE
    py = (rows[:, None] + offsets[None, :]).reshape(-1)[:, None]  # (R*S, 1)
    px = (cols[:, None] + offsets[None, :]).reshape(-1)[None, :]  # (1, C*S)
    half = extent / 2
    if shape == "circle":
        inside = (px - x) ** 2 + (py - y) ** 2 <= half**2
    elif shape == "square":
        inside = (np.abs(px - x) <= half) & (np.abs(py - y) <= half)
    else:  # a triangle, apex up: its half-width grows from 0 at the top to `half` at the base
        top = y - half
        inside = (py >= top) & (py <= y + half) & (np.abs(px - x) <= (py - top) / 2)
    s = _SUPERSAMPLE
    return inside.reshape(len(rows), s, len(cols), s).mean(axis=(1, 3))


def render(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """Draw the scene as a (size, size, 3) uint8 RGB array; a size other than 48 scales everything."""
    scale = size / IMAGE_SIZE
    image = np.empty((size, size, 3), dtype=np.float64)
    image[:] = scene.background
    for o in scene.objects:
        x, y, e = o.x * scale, o.y * scale, o.extent * scale
        # Only the pixels the object's box touches: the rest of the image is left as it is.
        r0, r1 = max(0, int(y - e / 2)), min(size, int(np.ceil(y + e / 2)))
        c0, c1 = max(0, int(x - e / 2)), min(size, int(np.ceil(x + e / 2)))
        rows, cols = np.arange(r0, r1, dtype=np.float64), np.arange(c0, c1, dtype=np.float64)
        window = image[r0:r1, c0:c1]
        outer = coverage(o.shape, x, y, e, rows, cols)[..., None]
        fill = np.array(o.fill, dtype=np.float64)
        if o.outline:  # the ring between the shape and one shrunk by a pixel (at 48 px) a side
            inner = coverage(o.shape, x, y, e - 2 * scale, rows, cols)[..., None]
            window[:] = window * (1 - outer) + fill * OUTLINE_DARKEN * (outer - inner) + fill * inner
        else:
            window[:] = window * (1 - outer) + fill * outer
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Text: captions, questions, passages


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _count_phrase(count: int, words: str, plural: str) -> str:
    """'a red circle' / 'two red circles'."""
    return f"{_article(words)} {words}" if count == 1 else f"{NUMBER_WORDS[count]} {plural}"


def _join(parts: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _plural(shape: str) -> str:
    return shape + "s"


def _grouped(objects: Iterable[ShapeObject], color: bool = True, size: bool = False) -> str:
    """The objects grouped by what is said of them and counted: 'two red circles and a green
    triangle' (with `size`: 'two small red circles ...'; without `color`: 'two circles ...')."""
    def words(o: ShapeObject) -> tuple[str, ...]:
        return tuple(w for w, keep in ((o.size, size), (o.color, color)) if keep) + (o.shape,)

    groups = Counter(words(o) for o in objects)  # insertion order = reading order
    return _join([_count_phrase(n, " ".join(w), " ".join(w[:-1] + (_plural(w[-1]),))) for w, n in groups.items()])


def short_caption(scene: Scene) -> str:
    """Colors and shapes only, the same (color, shape) grouped and counted:
    'two red circles and a green triangle'."""
    return _grouped(scene.objects)


def long_caption(scene: Scene) -> str:
    """Every object's size, color and shape, and its place where the place has a clear name."""
    def said(o: ShapeObject) -> str:
        where = f" {PLACE_PHRASES[o.position]}" if o.position else ""
        return f"{_article(o.size)} {o.phrase()}{where}"

    return _join([said(o) for o in scene.objects])


def _clear_relations(a: ShapeObject, b: ShapeObject) -> list[str]:
    """The relation words that hold from a to b with the margin."""
    return [words for words, holds in RELATIONS if holds(a, b)]


def relation_caption(scene: Scene, rng: random.Random) -> str | None:
    """'a red circle to the left of a blue square' (and any third object after 'and'), for scenes
    of 2 or 3 objects whose first two, in some order, stand in a clear relation; else None."""
    objs = list(scene.objects)
    if not 2 <= len(objs) <= 3:
        return None
    rng.shuffle(objs)
    a, b, rest = objs[0], objs[1], objs[2:]
    words = _clear_relations(a, b)
    if not words:
        return None
    name = lambda o: f"{_article(o.color)} {o.color} {o.shape}"  # noqa: E731
    text = f"{name(a)} {rng.choice(words)} {name(b)}"
    return text + "".join(f" and {name(o)}" for o in rest)


def captions(scene: Scene, rng: random.Random) -> tuple[str, list[str]]:
    """The caption-task target and the text-to-image prompts of a scene, in varied phrasings.

    The target names every object with its color and shape (what caption scores check), phrased
    one of several ways: with sizes and places, grouped with counts, with a count first ('three
    shapes: ...'), or by a relation. The prompts hold the same and shorter ways of asking for the
    scene: without colors ('two circles and a triangle'), with sizes, by relation.
    """
    n = len(scene.objects)
    things = rng.choice(["objects", "shapes"])
    complete = [long_caption(scene), short_caption(scene), _grouped(scene.objects, size=True)]
    if n > 1:
        complete.append(f"{NUMBER_WORDS[n]} {things}: {short_caption(scene)}")
    relation = relation_caption(scene, rng)
    if relation:
        complete.append(relation)
    target = rng.choice(complete)
    prompts = list(dict.fromkeys([target, short_caption(scene), long_caption(scene),
                                  _grouped(scene.objects, color=False), *([relation] if relation else [])]))
    return target, prompts


def _references(scene: Scene) -> dict[ShapeObject, str]:
    """The shortest unambiguous name of each object by its looks ('the red circle', 'the large red
    circle'); objects that only their place tells apart get none."""
    refs = {}
    for o in scene.objects:
        if sum((p.color, p.shape) == (o.color, o.shape) for p in scene.objects) == 1:
            refs[o] = f"the {o.color} {o.shape}"
        elif sum(p.kind() == o.kind() for p in scene.objects) == 1:
            refs[o] = f"the {o.phrase()}"
    return refs


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def questions(scene: Scene, rng: random.Random) -> list[tuple[str, str, str]]:
    """A handful of (question, one-word answer, qtype) about the scene, in random order.

    One question per type where the type applies (spatial: one true and one false when both
    exist); a question is asked only when its answer is unambiguous: a relation only when it
    or its opposite holds with the margin, a place only when it has a clear name held by one
    object.
    """
    objs = scene.objects
    colors = [o.color for o in objs]
    shapes = [o.shape for o in objs]
    out: list[tuple[str, str, str]] = [
        ("how many objects are there?", NUMBER_WORDS[len(objs)], "count")
    ]

    # Count of one color: usually a present one, sometimes an absent one (answer "zero").
    color = rng.choice(colors) if rng.random() < 0.75 else rng.choice(list(COLORS))
    out.append((f"how many {color} objects are there?", NUMBER_WORDS[colors.count(color)], "count"))
    shape = rng.choice(shapes)
    out.append((f"how many {_plural(shape)} are there?", NUMBER_WORDS[shapes.count(shape)], "count_shape"))

    unique_shapes = [o for o in objs if shapes.count(o.shape) == 1]
    if unique_shapes:
        o = rng.choice(unique_shapes)
        out.append((f"what color is the {o.shape}?", o.color, "color"))

    unique_colors = [o for o in objs if colors.count(o.color) == 1]
    if unique_colors:
        o = rng.choice(unique_colors)
        out.append((f"what shape is the {o.color} object?", o.shape, "shape"))

    # Spatial: (a, b, relation) over objects named by their looks, where the relation or its
    # opposite holds with the margin (a near tie is never asked).
    refs = _references(scene)
    named = [o for o in objs if o in refs]
    facts = []
    for a, b in itertools.permutations(named, 2):
        for words, holds in RELATIONS:
            truth = holds(a, b)
            if truth or holds(b, a):  # the opposite relation from a to b is this one from b to a
                facts.append((f"is {refs[a]} {words} {refs[b]}?", truth))
    for truth in (True, False):
        pool = [q for q, t in facts if t == truth]
        if pool:
            out.append((rng.choice(pool), _yes_no(truth), "spatial"))

    small = [o for o in objs if o.size == "small"]
    if len(small) == 1:
        out.append(("what color is the small object?", small[0].color, "small_color"))
    out.append(("is there a small object?", _yes_no(bool(small)), "small_present"))

    places = Counter(o.position for o in objs)
    placed = [o for o in objs if o.position and places[o.position] == 1]
    if placed:
        o = rng.choice(placed)
        out.append((f"what color is the object {PLACE_PHRASES[o.position]}?", o.color, "color_at"))

    # Existence of a color+shape: present or absent with equal odds.
    if rng.random() < 0.5:
        color, shape = rng.choice([(o.color, o.shape) for o in objs])
    else:
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
    present = (color, shape) in set(zip(colors, shapes))
    out.append((f"is there {_article(color)} {color} {shape}?", _yes_no(present), "exist"))

    rng.shuffle(out)
    return out


def _capitalize(text: str) -> str:
    return text[0].upper() + text[1:]


def passage(scene: Scene, rng: random.Random) -> str:
    """A few plain sentences about the scene: the count, each object, some relations."""
    objs = scene.objects
    n = len(objs)
    things = rng.choice(["object", "shape"])
    if n == 1:
        opening = rng.choice([
            f"There is one {things} in the picture.",
            f"The picture shows a single {things}.",
            f"Only one {things} can be seen on the plain background.",
        ])
    else:
        count = NUMBER_WORDS[n]
        opening = rng.choice([
            f"There are {count} {things}s in the picture.",
            f"The picture shows {count} {things}s.",
            f"{_capitalize(count)} {things}s can be seen on the plain background.",
        ])
    sentences = [opening]
    for o in objs:
        a = _capitalize(_article(o.size))
        if o.position:
            place = PLACE_PHRASES[o.position]
            sentences.append(rng.choice([
                f"{a} {o.phrase()} is {place}.",
                f"{a} {o.phrase()} sits {place}.",
                f"{_capitalize(place)} there is {_article(o.size)} {o.phrase()}.",
            ]))
        else:
            sentences.append(rng.choice([f"There is {_article(o.size)} {o.phrase()}.", f"{a} {o.phrase()} is there too."]))
    refs = _references(scene)
    named = [o for o in objs if o in refs]
    # One or two relations between distinct pairs that stand in a clear one, each told from a
    # random side.
    pairs = [(a, b) for a, b in itertools.combinations(named, 2) if _clear_relations(a, b)]
    for a, b in rng.sample(pairs, min(len(pairs), rng.randint(1, 2))):
        if rng.random() < 0.5:
            a, b = b, a
        sentences.append(f"{_capitalize(refs[a])} is {' and '.join(_clear_relations(a, b))} {refs[b]}.")
    if n > 1 and rng.random() < 0.5:
        colors = {o.color for o in objs}
        sentences.append("All of them have the same color." if len(colors) == 1 else
                         f"They come in {NUMBER_WORDS[len(colors)]} different colors.")
    return " ".join(sentences)


_SIZE_WORDS = set(SIZES)
_SHAPE_WORDS = {**{s: s for s in SHAPES}, **{_plural(s): s for s in SHAPES}}
_COUNT_WORDS = {"a": 1, "an": 1, **{w: i for i, w in enumerate(NUMBER_WORDS)}}
# Words after which a pending count/size/color no longer applies to the next shape word.
_BREAK_WORDS = {"and", "object", "objects", "shape", "shapes", ".", ",", ";", ":"}


def caption_objects(text: str) -> list[tuple[str | None, str, str]]:
    """Read the (size or None, color, shape) mentions out of a caption, expanding counts:
    'two small red circles' gives two ('small', 'red', 'circle'). Unknown words are ignored; a
    shape word with no color before it is not a mention (it cannot be checked)."""
    for mark in ".,;:!?":
        text = text.replace(mark, f" {mark} ")
    found: list[tuple[str | None, str, str]] = []
    count, size, color = 1, None, None
    for word in text.lower().split():
        if word in _SHAPE_WORDS:
            if color is not None:
                found.extend([(size, color, _SHAPE_WORDS[word])] * count)
            count, size, color = 1, None, None
        elif word in _COUNT_WORDS:
            count = _COUNT_WORDS[word]
        elif word in _SIZE_WORDS:
            size = word
        elif word in COLORS:
            color = word
        elif word in _BREAK_WORDS:
            count, size, color = 1, None, None
    return found


# ---------------------------------------------------------------------------------------------
# Parsing an image back into objects. Thresholds chosen on validation scenes (README, "The
# judge"): clean renders, VQ reconstructions and a trained model's images of them.

_CANDIDATE_DIST = 40.0  # RGB distance from the background that may be object (noise: far less)
_MIN_PIXELS = 12  # fewer pixels than this is a speckle, not an object (the smallest ≈ 35)
_MIN_EXTENT = 4  # a blob thinner than this is a streak, not an object
_MIN_TEMPLATE_IOU = 0.8  # the blob must overlap its shape as drawn this well
_TRIANGLE_SKEW = -0.25  # a blob whose mass skews up more than this (apex up) is a triangle
_SQUARE_CORNERS = 0.36  # a blob whose mass peaks more along its diagonals is a square, less a circle
_MAX_PALETTE_DIST = 55.0  # its fill must be this close (RGB) to one of the eight colors
_MAX_COLOR_SPREAD = 24.0  # its inner pixels this close (median) to one color blended with the background
MATCH_DISTANCE = 3.0  # px: a found object is the scene's when their centres are this close

_PALETTE_NAMES = list(COLORS)
_PALETTE = np.array([COLORS[c] for c in _PALETTE_NAMES], dtype=np.float32)  # (8, 3)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """OR over each pixel's 3×3 neighbourhood (H, W) bool."""
    h, w = mask.shape
    padded = np.pad(mask, 1)
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy:dy + h, dx:dx + w]
    return out


def _erode(mask: np.ndarray) -> np.ndarray:
    """AND over each pixel and its four neighbours: peels a one-pixel ring off a blob."""
    p = np.pad(mask, 1)
    return mask & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def _component(mask: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The 8-connected parts of `mask` that touch `seeds`, by repeated dilation (numpy only: the
    images are 48 px and the blobs a few pixels across, so this needs no image library)."""
    comp = mask & seeds
    while True:
        grown = _dilate(comp) & mask
        if (grown == comp).all():
            return comp
        comp = grown


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """Every 8-connected component of `mask`, as masks."""
    out, left = [], mask.copy()
    while left.any():
        seed = np.zeros_like(left)
        seed[np.unravel_index(np.argmax(left), left.shape)] = True
        comp = _component(left, seed)
        out.append(comp)
        left &= ~comp
    return out


def _median3(pixels: np.ndarray) -> np.ndarray:
    """3×3 median filter per channel (H, W, 3): removes isolated speckles and most noise, while
    an object's middle keeps its color."""
    h, w, _ = pixels.shape
    padded = np.pad(pixels, ((1, 1), (1, 1), (0, 0)), mode="edge")
    return np.median([padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=0)


@dataclass(frozen=True)
class BlobMeasures:
    """What the parser measures of one foreground region, before it judges whether it is an
    object (`_is_object`): exposed so that its thresholds can be chosen on measured data
    (benchmarks/judge.py, through `measure`)."""

    color: tuple[float, float, float]  # the fill: median of the inner pixels
    palette_distance: float  # RGB distance to the nearest of the eight colors
    spread: float  # median distance of the inner pixels from the background-to-fill line
    pixels: int  # of the blob at half strength
    thinnest: int  # the blob's smaller side, in pixels
    skew: float  # of the mass from top to bottom (a triangle about -0.57)
    corners: float  # diagonal minus axis kurtosis of the mass (a square about 0.6)
    shape: str
    x: float
    y: float
    extent: float
    overlap: float  # IoU with the shape drawn at (x, y, extent), over the pixels it surely covers or not


def _measure(pixels: np.ndarray, bg: np.ndarray, region: np.ndarray) -> BlobMeasures:
    """Measure the object one foreground region may hold.

    Its fill is the median of the region's inner pixels (less the edge's blend and any outline).
    Strength runs 0 (background) .. 1 (the fill) along the line between the two: blur spreads an
    edge evenly both ways, so the half-strength contour keeps a clean object's outline, and a
    darker outline lies past 1. Shape comes from how the mass spreads, which a blur barely moves:
    its skew from top to bottom (a triangle, apex up, holds most of it low; a circle or square
    none) and how much more peaked it is along the diagonals than along the axes (kurtosis: a
    square's corners; a circle is the same every way). The centre is the mass's centroid (a
    triangle's lies a sixth of its height below its box centre), the extent the one whose area is
    the mass (a blur moves mass about but keeps it).
    """
    inner = region
    for _ in range(2):
        peeled = _erode(inner)
        if peeled.sum() < 4:
            break
        inner = peeled
    color = np.median(pixels[inner], axis=0)  # (3,)
    direction = color - bg
    strength = (pixels - bg) @ direction / max(float(direction @ direction), 1.0)  # (H, W)
    blob = _component((strength > 0.5) & _dilate(region), inner)
    rows, cols = np.nonzero(blob)
    # Off the background-to-fill line: a blurred edge lies on it, a mix with another color does not.
    off_line = np.linalg.norm(pixels[inner] - bg - strength[inner, None] * direction, axis=-1)

    s = np.where(_dilate(_dilate(blob)), np.clip(strength, 0.0, 1.0), 0.0)
    mass = max(s.sum(), 1e-6)
    ys, xs = np.mgrid[: s.shape[0], : s.shape[1]] + 0.5

    def moment(along: np.ndarray, k: int) -> float:  # k-th standardized moment of the mass along a direction
        mean = (s * along).sum() / mass
        variance = max((s * (along - mean) ** 2).sum() / mass, 1e-6)
        return float((s * (along - mean) ** k).sum() / mass / variance ** (k / 2))

    skew = moment(ys, 3)
    corners = (moment(xs + ys, 4) + moment(xs - ys, 4) - moment(xs, 4) - moment(ys, 4)) / 2
    shape = "triangle" if skew < _TRIANGLE_SKEW else "square" if corners > _SQUARE_CORNERS else "circle"
    extent = math.sqrt(mass / {"triangle": 0.5, "square": 1.0, "circle": math.pi / 4}[shape])
    x, y = (s * xs).sum() / mass, (s * ys).sum() / mass - (extent / 6 if shape == "triangle" else 0.0)
    # The shape as drawn there, over the pixels it covers at least 3/4 or at most 1/4 (a pixel on
    # the drawn edge may go either way).
    grid = np.arange(IMAGE_SIZE, dtype=np.float64)
    drawn = coverage(shape, x, y, extent, grid, grid)
    sure, inside = (drawn >= 0.75) | (drawn <= 0.25), drawn >= 0.5
    overlap = (blob & inside & sure).sum() / max(1, ((blob | inside) & sure).sum())
    return BlobMeasures(
        tuple(float(c) for c in color), float(np.linalg.norm(_PALETTE - color, axis=1).min()),
        float(np.median(off_line)), int(len(rows)), int(min(np.ptp(rows), np.ptp(cols)) + 1) if len(rows) else 0,
        skew, corners, shape, float(x), float(y), float(extent), float(overlap))


def _is_object(m: BlobMeasures) -> bool:
    """Whether a measured blob is an object: big enough, one of the eight colors, one flat color,
    and shaped like what it is read as (a smear of colors is none of these)."""
    return (m.pixels >= _MIN_PIXELS and m.thinnest >= _MIN_EXTENT and m.palette_distance <= _MAX_PALETTE_DIST
            and m.spread <= _MAX_COLOR_SPREAD and m.overlap >= _MIN_TEMPLATE_IOU)


def _object(m: BlobMeasures) -> ShapeObject:
    name = _PALETTE_NAMES[int(np.argmin(np.linalg.norm(_PALETTE - np.array(m.color), axis=1)))]
    size = "small" if m.extent < SIZE_SPLIT else "large"
    return ShapeObject(m.shape, name, size, m.x, m.y, m.extent, tuple(int(round(c)) for c in m.color))


def _to_array(image: np.ndarray | Image.Image) -> np.ndarray:
    """Any RGB image at any size -> (48, 48, 3) float32."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    image = image.convert("RGB")
    if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        # BOX averages each 48 px pixel's footprint when shrinking (no ringing, no aliasing);
        # growing a smaller image needs interpolation, and bicubic keeps square corners square.
        shrinking = min(image.size) >= IMAGE_SIZE
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX if shrinking else Image.BICUBIC)
    return np.asarray(image, dtype=np.float32)


def background_of(pixels: np.ndarray) -> np.ndarray:
    """The background color: the median of the image's outer ring of pixels, which objects
    never reach (BORDER)."""
    ring = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    return np.median(ring, axis=0)


def measure(image: np.ndarray | Image.Image) -> list[BlobMeasures]:
    """What the parser measures of each foreground region of an image (any size, resized to 48 px):
    the connected parts that stand out from the background after a 3×3 median filter (which drops
    speckles), before it judges which are objects."""
    pixels = _to_array(image)
    bg = background_of(pixels)
    foreground = np.linalg.norm(_median3(pixels) - bg, axis=-1) > _CANDIDATE_DIST
    return [_measure(pixels, bg, region) for region in _components(foreground) if region.sum() >= _MIN_PIXELS]


def parse(image: np.ndarray | Image.Image) -> list[ShapeObject]:
    """The objects in an image (any size, resized to 48 px), in reading order."""
    return list(Scene(tuple(_object(m) for m in measure(image) if _is_object(m))).objects)


def match_count(found: Iterable[ShapeObject], truth: Iterable[ShapeObject],
                check: Iterable[str] = ("shape", "color", "size", "place")) -> int:
    """How many found objects pair off with the true ones: equal on the checked attributes and,
    when "place" is checked, centres within MATCH_DISTANCE (nearest pairs first)."""
    check = tuple(check)
    attrs = tuple(a for a in check if a != "place")
    found, truth = list(found), list(truth)
    if "place" not in check:
        bag = lambda objs: Counter(tuple(getattr(o, a) for a in attrs) for o in objs)  # noqa: E731
        return sum((bag(found) & bag(truth)).values())
    pairs = sorted((math.dist((f.x, f.y), (t.x, t.y)), i, j) for i, f in enumerate(found) for j, t in enumerate(truth)
                   if all(getattr(f, a) == getattr(t, a) for a in attrs))
    used_f, used_t = set(), set()
    for dist, i, j in pairs:
        if dist <= MATCH_DISTANCE and i not in used_f and j not in used_t:
            used_f.add(i)
            used_t.add(j)
    return len(used_f)


def scene_matches(found: Iterable[ShapeObject], expected: Scene,
                  check: Iterable[str] = ("shape", "color", "size", "place")) -> bool:
    """True when the found objects and the scene's pair off one to one on the checked attributes."""
    found = list(found)
    return len(found) == len(expected.objects) == match_count(found, expected.objects, check)


# ---------------------------------------------------------------------------------------------
# Splits and examples


def split_of(scene: Scene) -> str:
    """'train' (90%), 'validation' (5%) or 'test' (5%) from a stable hash of the scene's key, so
    that the splits never share a scene and every run agrees on them."""
    bucket = int.from_bytes(hashlib.sha256(scene.key().encode()).digest()[:8], "big") % 100
    return "train" if bucket < 90 else "validation" if bucket < 95 else "test"


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
        out.append((scene, Texts(caption=caption, prompts=prompts, qa=questions(scene, rng), passage=passage(scene, rng))))
    return out


def make_examples(split: str, n: int, seed: int = 0, image_size: int = IMAGE_SIZE) -> list[Example]:
    """`make_texts` with each scene rendered at `image_size`: a small set held in memory (the eval's)."""
    return [Example.of(render(scene, image_size), t, scene) for scene, t in make_texts(split, n, seed)]
