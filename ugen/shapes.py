"""The Shapes world: the embedded data set, generated in-process from a seed.

A scene is 1–4 flat objects (a shape, one of eight named colors, a size) on a 3×3 grid of a 48 px
image with a plain light background. Everything a training stage needs comes from the scene:
a rendered image, a short and a long caption, one-word question–answer pairs and a text passage.

The same module turns an image back into objects (`parse`). That parser is the judge of generated
images (GenEval-style scoring) and of generated captions (`caption_objects`), so the world is
designed to make it exact: positions snap to 16 px cells (each object lands in its own 2×2 block
of the VQ tokenizer's 6×6 codes), renders have no antialiasing, and sizes and colors are far apart.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import random
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from PIL import Image, ImageDraw

from ugen.data.sources import Example, Texts

IMAGE_SIZE = 48
GRID = 3
CELL = IMAGE_SIZE // GRID  # 16 px
BACKGROUND = (245, 245, 240)

POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
# Object extent in pixels at 48 px. 8 vs 14 keeps the two sizes far apart for the parser even
# after blur, and a large object still keeps a 1 px margin inside its 16 px cell.
SIZE_PX = {"small": 8, "large": 14}
# Hues a person names the same way; the closest pair (orange, yellow) is still ~80 RGB apart so
# that a VQ reconstruction's color shift does not flip the nearest palette entry.
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
NUM_OBJECTS_WEIGHTS = {1: 0.4, 2: 0.3, 3: 0.2, 4: 0.1}  # single objects are common on purpose
SPLITS = ("train", "validation", "test")

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# How each position reads after a noun: "a red circle at the top left", "on the left".
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
    """One object: what it is and which grid cell (0..8, row-major) holds it."""

    shape: str
    color: str
    size: str
    cell: int

    def __post_init__(self) -> None:
        if self.shape not in SHAPES or self.color not in COLORS or self.size not in SIZES:
            raise ValueError(f"unknown object attributes: {self}")
        if not 0 <= self.cell < GRID * GRID:
            raise ValueError(f"cell must be in 0..8, got {self.cell}")

    @property
    def row(self) -> int:
        return self.cell // GRID

    @property
    def col(self) -> int:
        return self.cell % GRID

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]

    @property
    def center(self) -> tuple[float, float]:
        """(x, y) pixel centre at IMAGE_SIZE: the middle of the cell."""
        return (self.col * CELL + CELL / 2, self.row * CELL + CELL / 2)

    def phrase(self) -> str:
        """'small red circle'."""
        return f"{self.size} {self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """The objects of one image, sorted by cell, at most one per cell."""

    objects: tuple[ShapeObject, ...]

    def __post_init__(self) -> None:
        objects = tuple(sorted(self.objects, key=lambda o: o.cell))
        cells = [o.cell for o in objects]
        if len(set(cells)) != len(cells):
            raise ValueError(f"two objects share a cell: {cells}")
        object.__setattr__(self, "objects", objects)

    def key(self) -> str:
        """Canonical string: the same scene always gives the same key, different scenes differ."""
        return "|".join(f"{o.cell}:{o.size}:{o.color}:{o.shape}" for o in self.objects)


def sample_scene(rng: random.Random, num_objects: int | None = None) -> Scene:
    """Draw a scene: the object count from NUM_OBJECTS_WEIGHTS, then distinct cells, then each
    object's attributes."""
    if num_objects is None:
        counts = list(NUM_OBJECTS_WEIGHTS)
        num_objects = rng.choices(counts, weights=[NUM_OBJECTS_WEIGHTS[c] for c in counts])[0]
    if not 1 <= num_objects <= GRID * GRID:
        raise ValueError(f"num_objects must be in 1..9, got {num_objects}")
    cells = rng.sample(range(GRID * GRID), num_objects)
    colors = list(COLORS)
    return Scene(tuple(
        ShapeObject(rng.choice(SHAPES), rng.choice(colors), rng.choice(SIZES), cell)
        for cell in cells
    ))


# ---------------------------------------------------------------------------------------------
# Rendering


def render(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """Draw the scene as a (size, size, 3) uint8 RGB array; a size other than 48 scales everything.

    No antialiasing, so that the parser is exact on clean renders.
    """
    scale = size / IMAGE_SIZE
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        cx, cy = obj.center
        half = SIZE_PX[obj.size] / 2
        # Inclusive pixel bounds of the object's box, scaled; PIL's shapes fill [x0, x1] inclusive.
        x0, y0 = round((cx - half) * scale), round((cy - half) * scale)
        x1, y1 = round((cx + half) * scale) - 1, round((cy + half) * scale) - 1
        fill = COLORS[obj.color]
        if obj.shape == "circle":
            draw.ellipse([x0, y0, x1, y1], fill=fill)
        elif obj.shape == "square":
            draw.rectangle([x0, y0, x1, y1], fill=fill)
        else:
            # A 2 px apex keeps the triangle mirror-symmetric on an even pixel width.
            mid = (x0 + x1 + 1) // 2
            draw.polygon([(mid - 1, y0), (mid, y0), (x1, y1), (x0, y1)], fill=fill)
    return np.asarray(image, dtype=np.uint8).copy()


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


def short_caption(scene: Scene) -> str:
    """Colors and shapes only, the same (color, shape) grouped and counted:
    'two red circles and a green triangle'."""
    groups = Counter((o.color, o.shape) for o in scene.objects)  # insertion order = cell order
    return _join([
        _count_phrase(n, f"{color} {shape}", f"{color} {_plural(shape)}")
        for (color, shape), n in groups.items()
    ])


def long_caption(scene: Scene) -> str:
    """Every object's size, color, shape and place, in cell order."""
    return _join([
        f"{_article(o.size)} {o.phrase()} {PLACE_PHRASES[o.position]}" for o in scene.objects
    ])


def _references(scene: Scene) -> dict[ShapeObject, str]:
    """The shortest unambiguous name of each object by its looks ('the red circle', 'the large red
    circle'); objects that only their place tells apart get none."""
    refs = {}
    for o in scene.objects:
        if sum((p.color, p.shape) == (o.color, o.shape) for p in scene.objects) == 1:
            refs[o] = f"the {o.color} {o.shape}"
        elif sum(p.phrase() == o.phrase() for p in scene.objects) == 1:
            refs[o] = f"the {o.phrase()}"
    return refs


# The four relations as (wording, test on (a, b)); 'above' means a strictly higher row.
RELATIONS = (
    ("to the left of", lambda a, b: a.col < b.col),
    ("to the right of", lambda a, b: a.col > b.col),
    ("above", lambda a, b: a.row < b.row),
    ("below", lambda a, b: a.row > b.row),
)


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def questions(scene: Scene, rng: random.Random) -> list[tuple[str, str, str]]:
    """A handful of (question, one-word answer, qtype) about the scene, in random order.

    One question per type where the type applies (spatial: one true and one false when both
    exist); a question is asked only when its answer is unambiguous.
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

    unique_shapes = [o for o in objs if shapes.count(o.shape) == 1]
    if unique_shapes:
        o = rng.choice(unique_shapes)
        out.append((f"what color is the {o.shape}?", o.color, "color"))

    unique_colors = [o for o in objs if colors.count(o.color) == 1]
    if unique_colors:
        o = rng.choice(unique_colors)
        out.append((f"what shape is the {o.color} object?", o.shape, "shape"))

    # Spatial: every (a, b, relation) over objects that have a name by their looks.
    refs = _references(scene)
    named = [o for o in objs if o in refs]
    facts = [
        (f"is {refs[a]} {words} {refs[b]}?", holds(a, b))
        for a in named for b in named if a is not b
        for words, holds in RELATIONS
    ]
    for truth in (True, False):
        pool = [q for q, t in facts if t == truth]
        if pool:
            out.append((rng.choice(pool), _yes_no(truth), "spatial"))

    small = [o for o in objs if o.size == "small"]
    if len(small) == 1:
        out.append(("what color is the small object?", small[0].color, "small_color"))
    out.append(("is there a small object?", _yes_no(bool(small)), "small_present"))

    o = rng.choice(objs)
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
        place = PLACE_PHRASES[o.position]
        sentences.append(rng.choice([
            f"{a} {o.phrase()} is {place}.",
            f"{a} {o.phrase()} sits {place}.",
            f"{_capitalize(place)} there is {_article(o.size)} {o.phrase()}.",
        ]))
    refs = _references(scene)
    named = [o for o in objs if o in refs]
    # One or two relations between distinct pairs, each told from a random side. Objects in
    # distinct cells always differ in row or column, so every pair has a true relation.
    pairs = list(itertools.combinations(named, 2))
    for a, b in rng.sample(pairs, min(len(pairs), rng.randint(1, 2))):
        if rng.random() < 0.5:
            a, b = b, a
        true = " and ".join(words for words, holds in RELATIONS if holds(a, b))
        sentences.append(f"{_capitalize(refs[a])} is {true} {refs[b]}.")
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
# Parsing an image back into objects


_BG = np.array(BACKGROUND, dtype=np.float32)
_PALETTE_NAMES = list(COLORS)
_PALETTE = np.array([COLORS[c] for c in _PALETTE_NAMES], dtype=np.float32)  # (8, 3)
_CANDIDATE_DIST = 40.0  # RGB distance from the background that may be object (noise: far less)
_MIN_PIXELS = 12  # fewer foreground pixels than this is a speckle, not an object (small ≈ 40)
_MIN_EXTENT = 4  # a 1–3 px thin strip is bleed from a neighbouring cell, not an object
# What an object looks like, so that a smear of colors is not read as one. Measured per object on
# 300 test scenes, at the 1st / 99th percentile: VQ reconstructions, blurred noisy renders and a
# trained model's images have template IoU >= 0.86, palette distance <= 35 and off-line spread
# <= 14. Decodings of random VQ codes have median IoU 0.49 and palette distance 84, and only 0.7%
# of their blobs pass all three (the parser used to read an object in nearly every cell of them).
_MIN_TEMPLATE_IOU = 0.75  # the blob must overlap some shape's template this well
_MAX_PALETTE_DIST = 40.0  # its color must be this close (RGB) to one of the eight colors
_MAX_COLOR_SPREAD = 20.0  # its pixels this close (median) to one color blended with the background


def _dilate(mask: np.ndarray) -> np.ndarray:
    """OR over each pixel's 3×3 neighbourhood (H, W) bool."""
    h, w = mask.shape
    padded = np.pad(mask, 1)
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy:dy + h, dx:dx + w]
    return out


def _component(mask: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The 8-connected parts of `mask` that touch `seeds`, by repeated dilation (numpy only)."""
    comp = mask & seeds
    while True:
        grown = _dilate(comp) & mask
        if (grown == comp).all():
            return comp
        comp = grown


@functools.lru_cache(maxsize=1)
def _templates() -> tuple[list[tuple[str, str]], np.ndarray]:
    """Masks of every (shape, size) as drawn in a cell window, each also shifted by up to 1 px
    (a generated image may place an object a pixel off): keys (K,) and masks (K, 14, 14) bool."""
    keys, masks = [], []
    win = CELL - 2
    for shape in SHAPES:
        for size in SIZES:
            image = render(Scene((ShapeObject(shape, "red", size, 0),)))
            mask = np.pad((image[1:CELL - 1, 1:CELL - 1] != BACKGROUND).any(axis=-1), 1)
            for dy in range(3):
                for dx in range(3):
                    keys.append((shape, size))
                    masks.append(mask[dy:dy + win, dx:dx + win])
    return keys, np.stack(masks)


def _median3(pixels: np.ndarray) -> np.ndarray:
    """3×3 median filter per channel (H, W, 3): removes isolated speckles and most noise, while
    an object's middle keeps its color."""
    h, w, _ = pixels.shape
    padded = np.pad(pixels, ((1, 1), (1, 1), (0, 0)), mode="edge")
    return np.median([padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=0)


def _parse_cell(pixels: np.ndarray, smooth: np.ndarray, cell: int) -> ShapeObject | None:
    """Read the object in one cell's window, or None when it holds none. `pixels` (H, W, 3) is
    the window, `smooth` the same window of the median-filtered image, which decides presence
    and where the object's core is."""
    dist = np.linalg.norm(smooth - _BG, axis=-1)  # (H, W)
    if (dist > _CANDIDATE_DIST).sum() < _MIN_PIXELS:
        return None
    # The core: pixels nearly as far from the background as the farthest. Blurred edges (object
    # blended with the background) fall outside it, so its median is the object's own color.
    # Read from the unfiltered pixels: under blur the filter would lighten a small object's peak.
    core = dist >= 0.8 * dist.max()
    color = np.median(pixels[core], axis=0)  # (3,)
    # Strength 0 (background) .. 1 (object color) along the line between the two. Blur spreads
    # an edge evenly both ways, so the half-strength contour keeps the clean object's outline.
    direction = color - _BG
    strength = (pixels - _BG) @ direction / max(float(direction @ direction), 1.0)  # (H, W)
    # The blob(s) grown from the core: drops speckles and a neighbour's bleed elsewhere.
    blob = _component(strength > 0.5, core)
    rows, cols = np.nonzero(blob)
    if len(rows) < _MIN_PIXELS or min(np.ptp(rows), np.ptp(cols)) + 1 < _MIN_EXTENT:
        return None

    palette_dist = np.linalg.norm(_PALETTE - color, axis=1)  # (8,)
    # Off the background-to-color line: a blurred edge lies on it, a mix with another color does not.
    off_line = np.linalg.norm(pixels[blob] - _BG - strength[blob, None] * direction, axis=-1)
    if palette_dist.min() > _MAX_PALETTE_DIST or np.median(off_line) > _MAX_COLOR_SPREAD:
        return None
    name = _PALETTE_NAMES[int(np.argmin(palette_dist))]
    # Shape and size together: the clean render (shifted by up to 1 px) that best overlaps the
    # blob (IoU). Whole-shape overlap tolerates what breaks single features such as fill ratio:
    # a blurred triangle loses its thin apex and a blurred square its corners, yet each still
    # overlaps its own template best.
    keys, templates = _templates()
    inter = (templates & blob).sum(axis=(1, 2))  # (K,)
    union = (templates | blob).sum(axis=(1, 2))  # (K,)
    iou = inter / union
    if iou.max() < _MIN_TEMPLATE_IOU:
        return None
    shape, size = keys[int(np.argmax(iou))]
    return ShapeObject(shape, name, size, cell)


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


def parse(image: np.ndarray | Image.Image) -> list[ShapeObject]:
    """The objects in an image (any size, resized to 48 px), sorted by cell.

    Each cell is read on its own, without its outer 1 px ring: a clean object never touches it,
    and it is where a neighbour's blur would bleed in.
    """
    pixels = _to_array(image)
    smooth = _median3(pixels)
    found = []
    for cell in range(GRID * GRID):
        top, left = (cell // GRID) * CELL, (cell % GRID) * CELL
        window = (slice(top + 1, top + CELL - 1), slice(left + 1, left + CELL - 1))
        obj = _parse_cell(pixels[window], smooth[window], cell)
        if obj is not None:
            found.append(obj)
    return found


def scene_matches(
    found: Iterable[ShapeObject],
    expected: Scene,
    check: Iterable[str] = ("shape", "color", "size", "cell"),
) -> bool:
    """True when the found objects and the scene's are equal multisets on the checked attributes."""
    check = tuple(check)

    def bag(objs: Iterable[ShapeObject]) -> Counter:
        return Counter(tuple(getattr(o, a) for a in check) for o in objs)

    return bag(found) == bag(expected.objects)


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
        long = long_caption(scene)
        texts = Texts(caption=long, prompts=[short_caption(scene), long], qa=questions(scene, rng), passage=passage(scene, rng))
        out.append((scene, texts))
    return out


def make_examples(split: str, n: int, seed: int = 0, image_size: int = IMAGE_SIZE) -> list[Example]:
    """`make_texts` with each scene rendered at `image_size`: a small set held in memory (the eval's)."""
    return [Example.of(render(scene, image_size), t, scene) for scene, t in make_texts(split, n, seed)]
