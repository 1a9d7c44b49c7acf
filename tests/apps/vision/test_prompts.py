import pytest
import torch
import torch.nn.functional as F

from apps.vision.prompts import check_templates, prompts, zero_shot_weights


def test_template_without_placeholder_is_rejected():
    with pytest.raises(ValueError, match=r"'a photo of a digit' must contain exactly one '\{\}'"):
        check_templates(["a photo of {}.", "a photo of a digit"])
    with pytest.raises(ValueError, match="templates is empty"):
        check_templates([])
    assert prompts(["cat", "dog"], ["a {}.", "the {}!"]) == [
        "a cat.",
        "the cat!",
        "a dog.",
        "the dog!",
    ]


def test_zero_shot_weights_match_a_brute_force_average():
    table = {}
    g = torch.Generator().manual_seed(0)

    def encode(texts):
        for t in texts:
            table.setdefault(t, torch.randn(6, generator=g) * 3)
        return torch.stack([table[t] for t in texts])

    names, temps = ["a", "b", "c"], ["x {}", "y {}"]
    w = zero_shot_weights(encode, names, temps)
    for i, n in enumerate(names):
        ref = sum(F.normalize(table[t.format(n)], dim=0) for t in temps) / 2
        assert torch.allclose(w[i], F.normalize(ref, dim=0), atol=1e-6)
