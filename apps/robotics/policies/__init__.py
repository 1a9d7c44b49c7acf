"""Action heads of the VLA policy, one folder per head as LeRobot lays out its policies.

Every head maps the encoder's features ``(B, F)`` to a chunk of normalised actions
``(B, chunk_size, action_dim)`` in [-1, 1] and has the same two verbs:
``loss(features, actions, pad_mask)`` (a scalar; padded steps, ``pad_mask`` True, left out)
and ``predict(features)``.

- ``tokens``: OpenVLA's 256-bin action tokens with cross-entropy (:class:`TokenHead`).
- ``l1_chunk``: OpenVLA-OFT's continuous chunk regressed with L1 (:class:`L1ChunkHead`).
- ``diffusion``: TinyVLA's diffusion-policy head, DDPM / DDIM (:class:`DiffusionHead`).

:func:`make_head` builds one by name.
"""

from __future__ import annotations

from typing import Any

from .base import ActionHead
from .diffusion import DiffusionHead
from .l1_chunk import L1ChunkHead
from .tokens import TokenHead

#: Head classes by name.
POLICY_HEADS: dict[str, type[ActionHead]] = {
    "tokens": TokenHead,
    "l1_chunk": L1ChunkHead,
    "diffusion": DiffusionHead,
}


def make_head(
    name: str, feature_dim: int, action_dim: int, chunk_size: int, **options: Any
) -> ActionHead:
    """The head ``name`` of :data:`POLICY_HEADS`; ``options`` go to its constructor.

    Raises:
        ValueError: ``name`` is not a known head, or an option is not one of its arguments.
    """
    if name not in POLICY_HEADS:
        raise ValueError(
            f"unknown policy head {name!r}; choose one of {sorted(POLICY_HEADS)} "
            "(apps.robotics.policies.POLICY_HEADS)"
        )
    cls = POLICY_HEADS[name]
    try:
        return cls(feature_dim, action_dim, chunk_size, **options)
    except TypeError as err:
        raise ValueError(
            f"policy head {name!r} does not take the option(s) {sorted(options)}: {err}"
        ) from err


__all__ = [
    "POLICY_HEADS",
    "ActionHead",
    "DiffusionHead",
    "L1ChunkHead",
    "TokenHead",
    "make_head",
]
