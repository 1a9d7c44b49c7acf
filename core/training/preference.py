"""Direct alignment losses on preference pairs: DPO, IPO and SLiC-style hinge.

Each pair is a prompt with a chosen and a rejected completion. The losses need, per pair,
the summed log-probability of each completion under the policy being trained and under a
frozen reference (the model before preference tuning). With the log-ratio margin

    h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)),

* **DPO** (Rafailov et al., 2023), ``loss_type="sigmoid"``:
  ``-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)`` (``eps`` = label
  smoothing, the conservative DPO variant; 0 gives plain DPO);
* **IPO** (Azar et al., 2023), ``loss_type="ipo"``: ``(h - 1 / (2 beta))^2``, which does
  not push the margin to infinity on deterministic preferences;
* **hinge** (SLiC-HF, Zhao et al., 2023), ``loss_type="hinge"``: ``max(0, 1 - beta h)``.

The implicit rewards ``beta (log pi - log ref)`` of both completions are returned for
logging (reward accuracy = share of pairs whose chosen reward is higher).
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


class PreferenceLoss(NamedTuple):
    """Mean loss over the pairs and the per-pair implicit rewards."""

    loss: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> PreferenceLoss:
    """A direct alignment loss from summed completion log-probabilities (all ``(pairs,)``).

    Args:
        policy_chosen / policy_rejected: ``log pi(y | x)`` of the trained model.
        ref_chosen / ref_rejected: ``log ref(y | x)`` of the frozen reference (no gradient
            flows into them).
        beta: Strength of the implicit KL to the reference (> 0).
        loss_type: ``"sigmoid"`` (DPO), ``"ipo"`` or ``"hinge"`` (see the module doc).
        label_smoothing: Conservative-DPO ``eps`` in [0, 0.5); ``"sigmoid"`` only.
    """
    if beta <= 0:
        raise ValueError(f"dpo_loss beta={beta} must be > 0.")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"dpo_loss loss_type={loss_type!r} must be one of {LOSS_TYPES}.")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"dpo_loss label_smoothing={label_smoothing} must lie in [0, 0.5).")
    shapes = {tuple(t.shape) for t in (policy_chosen, policy_rejected, ref_chosen, ref_rejected)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(
            f"dpo_loss takes four (pairs,) tensors of equal shape; got shapes {sorted(shapes)}."
        )
    chosen_ratio = policy_chosen - ref_chosen.detach()
    rejected_ratio = policy_rejected - ref_rejected.detach()
    margin = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * margin)
        if label_smoothing:
            losses = losses - label_smoothing * F.logsigmoid(-beta * margin)
    elif loss_type == "ipo":
        losses = (margin - 1 / (2 * beta)) ** 2
    else:
        losses = F.relu(1 - beta * margin)
    return PreferenceLoss(
        losses.mean(), beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
    )
