"""PCB-Merging against a direct dense transcription of the paper's formulas."""

from __future__ import annotations

import pytest
import torch

from core.merging import pcb


def pcb_reference(taus: torch.Tensor, ratio: float, clip: float) -> torch.Tensor:
    """Dense PCB over one flattened tensor, quantiles by sorting (as the authors' code)."""
    k, n = taus.shape
    mags = taus.abs()
    ordered = mags.sort(dim=1).values
    lo = ordered[:, int(n * clip)][:, None]
    hi = ordered[:, int(n * (1 - clip)) - 1][:, None]
    clipped_mag = torch.minimum(torch.maximum(mags, lo), hi)
    clipped = torch.sign(taus) * clipped_mag
    intra = torch.exp(k * ((clipped_mag - lo) / (hi - lo)) ** 2)
    inter = torch.softmax(taus * taus.sum(0), dim=0)
    score = intra * inter
    ordered = score.sort(dim=1).values
    cut = ordered[:, int(n * (1 - ratio))][:, None]
    top = ordered[:, n - 1][:, None]
    weight = (torch.minimum(torch.maximum(score, cut), top) - cut) / (top - cut)
    return (clipped * weight).sum(0) / weight.sum(0).clamp_min(1e-12)


@pytest.mark.parametrize("ratio", [0.1, 0.3, 1.0])
def test_pcb_matches_the_reference(ratio: float) -> None:
    gen = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(20, 30, generator=gen)}
    models = [{"w": base["w"] + 0.1 * torch.randn(20, 30, generator=gen)} for _ in range(3)]
    taus = torch.stack([(m["w"] - base["w"]).reshape(-1) for m in models])
    expected = base["w"] + 0.7 * pcb_reference(taus, ratio, 0.01).reshape(20, 30)
    out = pcb(base, models, ratio=ratio, scaling=0.7, clip=0.01)["w"]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_low_scores_are_dropped() -> None:
    gen = torch.Generator().manual_seed(1)
    base = {"w": torch.zeros(1000)}
    models = [{"w": torch.randn(1000, generator=gen)} for _ in range(2)]
    out = pcb(base, models, ratio=0.1)["w"]
    # an entry survives where at least one model kept it: at most 2 x 10 %
    assert 0.1 <= float((out != 0).float().mean()) <= 0.2


def test_identical_models_give_that_model() -> None:
    gen = torch.Generator().manual_seed(2)
    base = {"w": torch.zeros(500)}
    ft = {"w": torch.randn(500, generator=gen)}
    out = pcb(base, [ft, ft], ratio=1.0, clip=0.0)["w"]
    kept = out != 0
    torch.testing.assert_close(out[kept], ft["w"][kept])


def test_ratio_must_be_positive() -> None:
    base = {"w": torch.zeros(3)}
    with pytest.raises(ValueError, match="ratio"):
        pcb(base, [base], ratio=0.0)
