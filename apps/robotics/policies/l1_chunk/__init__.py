"""OpenVLA-OFT-style continuous action-chunk head trained with L1."""

from .head import L1ChunkHead

__all__ = ["L1ChunkHead"]
