"""A small top-down rasterizer for the 2-D tabletop: discs, rings and rotated squares to RGB.

Why our own: the suite must render headless on any CPU without pygame or OpenGL. Shapes are
drawn with PIL at ``supersample`` times the output resolution and box-filtered down, which
anti-aliases edges so that sub-pixel motion changes the image smoothly (a vision policy then
sees motion it can regress on instead of one-pixel jumps).

Camera convention (top-down, orthographic): the table spans ``[0, world]`` in x and y; image
column = x and image row = y, both scaled by ``size / world`` (so y points *down* the image,
as in the physics state). Pixel ``(row, col)`` covers world ``[col, col + 1) x [row, row + 1)``
times the scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Disc:
    """A filled disc, or a ring when ``width`` is set (line width in world units)."""

    centre: tuple[float, float]
    radius: float
    colour: RGB
    width: float | None = None


@dataclass(frozen=True)
class Square:
    """A filled square of half side ``half``, rotated by ``angle`` radians about its centre."""

    centre: tuple[float, float]
    half: float
    angle: float
    colour: RGB


def square_corners(centre: tuple[float, float], half: float, angle: float) -> np.ndarray:
    """The four corners (4, 2) of a rotated square, in world units, counter-clockwise in x-y."""
    c, s = np.cos(angle), np.sin(angle)
    local = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
    rotation = np.array([[c, -s], [s, c]])
    return local @ rotation.T + np.asarray(centre, dtype=float)


def rasterize(
    shapes: Sequence[Disc | Square],
    size: int,
    world: float,
    background: RGB,
    supersample: int = 3,
) -> np.ndarray:
    """Draw ``shapes`` in order (later on top) and return a ``(size, size, 3)`` uint8 image.

    Args:
        shapes: Discs, rings and squares in world coordinates.
        size: Output side in pixels.
        world: Side of the table in world units (the camera sees exactly the table).
        background: Table colour.
        supersample: Drawing resolution factor before the box-filter downsample (1 = aliased).
    """
    if size < 1 or supersample < 1:
        raise ValueError(f"size ({size}) and supersample ({supersample}) must be >= 1")
    big = size * supersample
    scale = big / world
    canvas = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(canvas)
    for shape in shapes:
        if isinstance(shape, Disc):
            x, y = shape.centre[0] * scale, shape.centre[1] * scale
            r = shape.radius * scale
            box = (x - r, y - r, x + r, y + r)
            if shape.width is None:
                draw.ellipse(box, fill=shape.colour)
            else:
                draw.ellipse(box, outline=shape.colour, width=max(1, round(shape.width * scale)))
        elif isinstance(shape, Square):
            corners = square_corners(shape.centre, shape.half, shape.angle) * scale
            draw.polygon([tuple(p) for p in corners.tolist()], fill=shape.colour)
        else:
            raise TypeError(f"cannot draw {type(shape).__name__}: only Disc and Square")
    if supersample > 1:
        canvas = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(canvas, dtype=np.uint8)
