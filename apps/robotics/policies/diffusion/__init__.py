"""TinyVLA-style diffusion action head (DDPM training, DDIM sampling)."""

from .head import DiffusionHead

__all__ = ["DiffusionHead"]
