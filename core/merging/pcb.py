"""PCB-Merging: parameter competition balancing (Du et al., NeurIPS 2024).

Per tensor, with K task vectors tau_i (n entries each):

1. Clip outliers: |tau_i| is clamped to its [clip, 1 - clip] quantiles.
2. Intra-balancing (importance within a task): exp(K * minmax(|tau_i|)^2), where minmax
   rescales the clipped magnitudes to [0, 1].
3. Inter-balancing (agreement with the other tasks): softmax over tasks of
   tau_i * sum_j tau_j, entry by entry.
4. Score beta_i = intra * inter. Drop: the (1 - ratio) fraction with the lowest score gets
   weight 0; the rest are min-max rescaled to (0, 1].
5. Merge: theta = theta_pre + scaling * sum_i beta_i tau_i / sum_i beta_i.

This follows the authors' reference implementation, except that it works per tensor (the
reference flattens the whole model into one vector), which lets the merge stream one tensor
at a time; quantiles and the drop are therefore per tensor too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from . import checks, ops
from .engine import TensorJob, merge_state_dicts
from .registry import MergeMethod, register_method


def _kernel(job: TensorJob) -> None:
    n = job.numel
    count = len(job.models)
    clip, ratio, scaling = job.params["clip"], job.params["ratio"], job.params["scaling"]
    if n == 0:
        job.write(slice(0, 0), job.base_at(slice(0, 0)))
        return
    lo_idx = min(n - 1, int(n * clip))
    hi_idx = max(lo_idx, min(n - 1, int(n * (1 - clip)) - 1))

    def taus(sl: slice) -> tuple[Tensor, list[Tensor]]:
        b = job.base_at(sl)
        return b, [job.model_at(k, sl) - b for k in range(count)]

    def doubled_magnitudes(sl: slice) -> list[Tensor]:
        return [t.abs() for t in taus(sl)[1] for _ in (0, 1)]

    bounds = ops.kth_smallest(doubled_magnitudes, n, [lo_idx, hi_idx] * count)
    lows, highs = bounds[0::2], bounds[1::2]

    def scores(sl: slice) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        b, tv = taus(sl)
        clipped, intra = [], []
        for t, lo, hi in zip(tv, lows, highs, strict=True):
            mag = t.abs().clamp(lo, hi)
            clipped.append(torch.sign(t) * mag)
            span = hi - lo
            unit = (mag - lo) / span if span > 0 else torch.zeros_like(mag)
            intra.append(torch.exp(count * unit.square()))
        total = sum(tv)
        inter = torch.softmax(torch.stack([t * total for t in tv]), dim=0)
        return b, clipped, [a * c for a, c in zip(intra, inter, strict=True)]

    c_idx = min(n - 1, int(n * (1 - ratio)))
    found = ops.kth_smallest(
        lambda sl: [s for s in scores(sl)[2] for _ in (0, 1)], n, [c_idx, n - 1] * count
    )
    cuts, tops = found[0::2], found[1::2]
    for sl in job.chunks():
        b, clipped, score = scores(sl)
        merged = torch.zeros_like(b)
        norm = torch.zeros_like(b)
        for t, s, cut, top in zip(clipped, score, cuts, tops, strict=True):
            if top > cut:
                weight = (s.clamp(cut, top) - cut) / (top - cut)
            else:  # every kept score is equal: keep them with weight 1
                weight = (s >= cut).to(b.dtype)
            merged += weight * t
            norm += weight
        job.write(sl, b + scaling * merged / norm.clamp_min(1e-12))


def _check(params: dict[str, Any], model_params: list[dict[str, Any]]) -> None:
    checks.number("pcb", "scaling", params["scaling"])
    checks.in_range("pcb", "ratio", params["ratio"], 0.0, 1.0, low_open=True)
    checks.in_range("pcb", "clip", params["clip"], 0.0, 0.5, high_open=True)


_PCB = register_method(
    MergeMethod(
        name="pcb",
        summary="score entries by intra-task importance x inter-task agreement, drop, rescale",
        params={"ratio": 0.1, "scaling": 1.0, "clip": 1e-4},
        per_model=(),
        kernel=_kernel,
        check=_check,
    )
)


def pcb(
    base: Mapping[str, Tensor],
    finetuned: Sequence[Mapping[str, Tensor]],
    ratio: float = _PCB.params["ratio"],
    scaling: float = _PCB.params["scaling"],
    clip: float = _PCB.params["clip"],
) -> dict[str, Tensor]:
    """PCB-merge ``finetuned`` onto ``base``.

    Args:
        ratio: Fraction of entries kept per task and tensor (the rest are dropped).
        scaling: lambda on the balanced task vector.
        clip: Quantile at which task-vector magnitudes are clipped on both ends.
    """
    return merge_state_dicts("pcb", finetuned, base, ratio=ratio, scaling=scaling, clip=clip)
