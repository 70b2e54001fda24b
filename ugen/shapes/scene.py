"""What a Shapes scene is: the palette, shapes and sizes, the objects, their relations and
places, how a scene is drawn at random, and which split it belongs to."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

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
# Splits and examples


def split_of(scene: Scene) -> str:
    """'train' (90%), 'validation' (5%) or 'test' (5%) from a stable hash of the scene's key, so
    that the splits never share a scene and every run agrees on them."""
    bucket = int.from_bytes(hashlib.sha256(scene.key().encode()).digest()[:8], "big") % 100
    return "train" if bucket < 90 else "validation" if bucket < 95 else "test"


