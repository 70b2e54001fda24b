"""Single shapes drawn by a plain PIL script, not by ugen's renderer: its own shades, sizes, places
and backgrounds, PIL's own primitives (ellipse, rectangle, polygon) at 4x, shrunk to 48 px.

What a model trained on the Shapes world should still name (`eval/evaluate.py`, understanding:
`single_object_pil`), and what the judge must still read (tests/test_shapes.py).
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw

from ugen.shapes import COLORS, SHAPES

SCALE = 4  # drawn at 4x 48 px, then shrunk: PIL's primitives have no antialiasing of their own


def draw_single_shapes(n: int, seed: int = 0, size: int = 48) -> list[tuple[np.ndarray, str, str]]:
    """n images of one shape each, with the (shape, color) it shows: a shade up to 20 off the
    named color on each channel (as long as it is still nearest to it), an extent of 6–18 px, any
    place that keeps it inside, a white, grey or light-tinted background."""
    rng = random.Random(f"pil-shapes-{seed}")
    palette = {name: np.array(rgb, dtype=float) for name, rgb in COLORS.items()}
    out = []
    while len(out) < n:
        shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
        fill = tuple(int(np.clip(c + rng.randint(-20, 20), 0, 255)) for c in COLORS[color])
        if min(palette, key=lambda name: np.linalg.norm(palette[name] - fill)) != color:
            continue  # a shade that reads as another color's is not this color's any more
        side = size * SCALE
        extent = rng.uniform(6, 18) / 48 * side
        x, y = (rng.uniform(extent / 2 + SCALE, side - extent / 2 - SCALE) for _ in range(2))
        background = rng.choice([(255, 255, 255), (235, 235, 235), tuple(rng.randint(230, 255) for _ in range(3))])
        image = Image.new("RGB", (side, side), background)
        draw = ImageDraw.Draw(image)
        box = [x - extent / 2, y - extent / 2, x + extent / 2, y + extent / 2]
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(x, box[1]), (box[2], box[3]), (box[0], box[3])], fill=fill)
        out.append((np.asarray(image.resize((size, size), Image.BOX)), shape, color))
    return out
