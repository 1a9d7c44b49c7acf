"""Render grayscale digits as RGB images, clean or under a named distribution shift.

Every function takes a batch of grayscale digits ``(N, H, W)`` in [0, 1] (white strokes on
black, as in MNIST) and returns RGB images ``(N, 3, size, size)`` in [0, 1]. Random shifts
draw their parameters from a ``torch.Generator``, so a shift set built from the same
images and seed is the same on every machine.

The shifts mimic the kinds of change that ImageNet-style OOD suites test (geometry,
photometry, corruption, background, rendition):

==============  =====================================================================
``rotation``    rotated by 35-65 degrees, either direction
``flip180``     upside down; covers 8 classes (6 and 9 swap meaning, so they are left out)
``inversion``   black strokes on white
``noise``       additive Gaussian noise, sigma 0.45
``blur``        Gaussian blur, sigma 2.5 pixels (at 64 px)
``colour``      random stroke and background colours of different hues
``texture``     coloured strokes over natural textures from scikit-image
``scale``       shrunk to 45-60 % and placed off-centre
==============  =====================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "SHIFTS",
    "SHIFT_CLASSES",
    "augment_for_alignment",
    "render",
    "shift_names",
]


def _check_digits(images: Tensor) -> None:
    if images.ndim != 3 or not images.is_floating_point():
        raise ValueError(
            f"digits must be a float tensor of shape (N, H, W) in [0, 1]; got dtype "
            f"{images.dtype} and shape {tuple(images.shape)}."
        )


def render(images: Tensor, size: int = 64) -> Tensor:
    """Clean rendering: resize to ``size`` (bilinear) and repeat the gray channel to RGB."""
    _check_digits(images)
    x = F.interpolate(images[:, None], size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp(0, 1).expand(-1, 3, -1, -1).contiguous()


def _affine(x: Tensor, angle: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """Rotate by ``angle`` (radians), zoom out by ``scale`` (<1 shrinks), move by ``shift``."""
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, -shift[:, 0]], -1), torch.stack([sin, cos, -shift[:, 1]], -1)],
        dim=1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def _random_sign(n: int, gen: torch.Generator) -> Tensor:
    return torch.randint(0, 2, (n,), generator=gen).float() * 2 - 1


def _rotation(x: Tensor, gen: torch.Generator) -> Tensor:
    n = len(x)
    angle = torch.deg2rad(_uniform(n, 35, 65, gen)) * _random_sign(n, gen)
    return _affine(x, angle, torch.ones(n), torch.zeros(n, 2))


def _flip180(x: Tensor, gen: torch.Generator) -> Tensor:
    return torch.flip(x, dims=(-2, -1))


def _inversion(x: Tensor, gen: torch.Generator) -> Tensor:
    return 1.0 - x


def _noise(x: Tensor, gen: torch.Generator) -> Tensor:
    noise = torch.randn(x.shape[0], 1, *x.shape[2:], generator=gen) * 0.45
    return (x + noise).clamp(0, 1)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur with a kernel of radius ``ceil(3 sigma)`` (reflect padding)."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _blur(x: Tensor, gen: torch.Generator) -> Tensor:
    return gaussian_blur(x, 2.5)


def _hsv_colour(hue: Tensor, sat: Tensor, val: Tensor) -> Tensor:
    """RGB (N, 3) from hue/saturation/value in [0, 1]."""
    k = torch.tensor([5.0, 3.0, 1.0])
    kk = (k[None] + hue[:, None] * 6) % 6
    rgb = val[:, None] - val[:, None] * sat[:, None] * torch.clamp(torch.minimum(kk, 4 - kk), 0, 1)
    return rgb


def _two_colours(n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    hue_fg = torch.rand(n, generator=gen)
    hue_bg = (hue_fg + _uniform(n, 0.25, 0.75, gen)) % 1.0
    fg = _hsv_colour(hue_fg, _uniform(n, 0.6, 1.0, gen), _uniform(n, 0.8, 1.0, gen))
    bg = _hsv_colour(hue_bg, _uniform(n, 0.5, 1.0, gen), _uniform(n, 0.2, 0.6, gen))
    return fg, bg


def _colour(x: Tensor, gen: torch.Generator) -> Tensor:
    fg, bg = _two_colours(len(x), gen)
    a = x[:, :1]
    return a * fg[:, :, None, None] + (1 - a) * bg[:, :, None, None]


_TEXTURES: Tensor | None = None


def _texture_bank(size: int) -> Tensor:
    """Grayscale natural textures from scikit-image (brick, grass, gravel, camera...)."""
    global _TEXTURES
    if _TEXTURES is None or _TEXTURES.shape[-1] != size:
        from skimage import color, data

        images = []
        for name in ("brick", "grass", "gravel", "camera", "moon", "coffee", "rocket"):
            img = np.asarray(getattr(data, name)(), dtype=np.float32)
            if img.ndim == 3:
                img = color.rgb2gray(img[..., :3])
            img = img / max(float(img.max()), 1e-6)
            images.append(torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)))
        # Each texture resized once to 4x the target, crops are taken from it.
        big = [
            F.interpolate(t[None, None], size=(4 * size, 4 * size), mode="area")[0, 0]
            for t in images
        ]
        _TEXTURES = torch.stack(big)
    return _TEXTURES


def _texture(x: Tensor, gen: torch.Generator) -> Tensor:
    n, _, h, w = x.shape
    bank = _texture_bank(h)
    idx = torch.randint(0, len(bank), (n,), generator=gen)
    oy = torch.randint(0, bank.shape[-2] - h + 1, (n,), generator=gen)
    ox = torch.randint(0, bank.shape[-1] - w + 1, (n,), generator=gen)
    bg = torch.stack([bank[i, y : y + h, z : z + w] for i, y, z in zip(idx, oy, ox, strict=True)])
    fg, tint = _two_colours(n, gen)
    bg_rgb = bg[:, None] * (0.4 + tint[:, :, None, None])
    a = x[:, :1]
    return (a * fg[:, :, None, None] + (1 - a) * bg_rgb.clamp(0, 1)).clamp(0, 1)


def _scale(x: Tensor, gen: torch.Generator) -> Tensor:
    n = len(x)
    scale = _uniform(n, 0.45, 0.6, gen)
    room = 1 - scale
    shift = torch.stack([_uniform(n, -1, 1, gen), _uniform(n, -1, 1, gen)], -1) * room[:, None]
    return _affine(x, torch.zeros(n), scale, shift)


ShiftFn = Callable[[Tensor, torch.Generator], Tensor]

#: Named shifts: each maps clean RGB renderings (N, 3, S, S) to shifted ones.
SHIFTS: dict[str, ShiftFn] = {
    "rotation": _rotation,
    "flip180": _flip180,
    "inversion": _inversion,
    "noise": _noise,
    "blur": _blur,
    "colour": _colour,
    "texture": _texture,
    "scale": _scale,
}

#: Shifts that cover only some classes (class-subset projection at evaluation).
SHIFT_CLASSES: dict[str, list[int]] = {"flip180": [0, 1, 2, 3, 4, 5, 7, 8]}


def shift_names() -> list[str]:
    """Every registered shift name, in a fixed order."""
    return list(SHIFTS)


def apply_shift(name: str, rgb: Tensor, seed: int) -> Tensor:
    """Apply shift ``name`` to clean renderings ``rgb``, drawing its randomness from ``seed``."""
    if name not in SHIFTS:
        raise ValueError(f"unknown shift {name!r}; choose from {', '.join(SHIFTS)}.")
    gen = torch.Generator().manual_seed(seed)
    return SHIFTS[name](rgb, gen).clamp(0, 1)


def augment_for_alignment(rgb: Tensor, seed: int) -> Tensor:
    """Generic appearance variety for the LiT alignment pool (stands in for web diversity).

    Per image, independently: a small rotation (+-15 degrees) and zoom (0.8-1.05), with
    probability 0.3 inverted, with probability 0.3 recoloured. None of the benchmark's
    test-time shift parameters is used (no blur, noise, texture, large rotation or 180).
    """
    gen = torch.Generator().manual_seed(seed)
    n = len(rgb)
    angle = torch.deg2rad(_uniform(n, -15, 15, gen))
    zoom = _uniform(n, 0.8, 1.05, gen)
    x = _affine(rgb, angle, zoom, torch.zeros(n, 2))
    invert = torch.rand(n, generator=gen) < 0.3
    x = torch.where(invert[:, None, None, None], 1 - x, x)
    recolour = torch.rand(n, generator=gen) < 0.3
    fg, bg = _two_colours(n, gen)
    a = x[:, :1]
    coloured = a * fg[:, :, None, None] + (1 - a) * bg[:, :, None, None]
    return torch.where(recolour[:, None, None, None], coloured, x).clamp(0, 1)
