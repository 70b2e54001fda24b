"""The judge: an image parsed back into objects, and found objects matched against a scene."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from PIL import Image

from ugen.shapes.drawing import coverage
from ugen.shapes.scene import COLORS, IMAGE_SIZE, SIZE_SPLIT, Scene, ShapeObject

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


