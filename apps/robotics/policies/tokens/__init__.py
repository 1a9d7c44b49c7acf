"""OpenVLA-style 256-bin action-token head."""

from .head import TokenHead

__all__ = ["TokenHead"]
