"""A small, randomly initialised default-recipe policy with a fixed normaliser, for the
tests of the loops outside Lightning (online, continual)."""

from __future__ import annotations

from apps.robotics.behaviour_cloning import build_policy
from apps.robotics.model import fake_text_tower
from apps.robotics.normalize import Normalizer
from apps.robotics.policy import VLAPolicy

#: Encoder options of a small policy (no ImageNet weights, few keypoints, narrow features).
SMALL = {"pretrained": False, "num_keypoints": 8, "feature_dim": 32}


def small_policy() -> VLAPolicy:
    """The default recipe's policy at :data:`SMALL` size, chunks of 4, fake text tower."""
    policy = build_policy(0, chunk_size=4, text_tower=fake_text_tower(), **SMALL)
    policy.normalizer = Normalizer(
        action_low=[-40.0, -40.0], action_high=[40.0, 40.0], state_low=[0, 0], state_high=[96, 96]
    )
    return policy
