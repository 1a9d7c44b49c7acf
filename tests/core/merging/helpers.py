"""Small state dicts shared by the merging tests (seeded, a few hundred numbers each)."""

from __future__ import annotations

import torch
from torch import Tensor

SHAPES = {
    "embed.weight": (6, 4),
    "layers.0.attn.weight": (5, 5),
    "layers.1.mlp.weight": (4, 6),
    "layers.1.mlp.bias": (4,),
    "head.weight": (3, 4),
    "scale": (),
}


def make_inputs(
    n_models: int = 3, dtype: torch.dtype = torch.float32, seed: int = 0
) -> tuple[dict[str, Tensor], list[dict[str, Tensor]], list[dict[str, Tensor]]]:
    """(base, fine-tuned models, diagonal Fishers); a non-float ``steps`` buffer rides along."""
    gen = torch.Generator().manual_seed(seed)
    base = {k: torch.randn(s, generator=gen).to(dtype) for k, s in SHAPES.items()}
    base["steps"] = torch.tensor([3, 1], dtype=torch.int64)
    models, fishers = [], []
    for _ in range(n_models):
        models.append(
            {
                k: (v.float() + 0.3 * torch.randn(v.shape, generator=gen)).to(dtype)
                if v.is_floating_point()
                else v.clone()
                for k, v in base.items()
            }
        )
        fishers.append(
            {
                k: torch.rand(v.shape, generator=gen)
                for k, v in base.items()
                if v.is_floating_point()
            }
        )
    return base, models, fishers


def non_contiguous(t: Tensor) -> Tensor:
    """The same values in a strided (non-contiguous) view."""
    holder = torch.zeros((*t.shape, 2), dtype=t.dtype)
    holder[..., 0] = t
    return holder[..., 0]


def clone_all(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in sd.items()}


def assert_same(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k
