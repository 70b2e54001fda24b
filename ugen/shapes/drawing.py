"""Pixels of a scene."""

from __future__ import annotations

import numpy as np

from ugen.shapes.scene import IMAGE_SIZE, OUTLINE_DARKEN, Scene

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


