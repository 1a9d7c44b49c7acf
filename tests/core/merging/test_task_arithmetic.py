"""Task vectors and task arithmetic: closed forms."""

from __future__ import annotations

import pytest
import torch

from core.merging import apply_task_vector, task_arithmetic, task_vector

from .helpers import make_inputs


def test_task_arithmetic_closed_form() -> None:
    base, models, _ = make_inputs(n_models=2)
    out = task_arithmetic(base, models, scaling=0.5, weights=[1.0, -2.0])
    for key, b in base.items():
        if b.is_floating_point():
            expected = b + 0.5 * ((models[0][key] - b) - 2.0 * (models[1][key] - b))
            torch.testing.assert_close(out[key], expected)


def test_one_model_at_scaling_one_is_that_model() -> None:
    base, models, _ = make_inputs(n_models=1, dtype=torch.float64)
    out = task_arithmetic(base, models)
    for key in base:
        torch.testing.assert_close(out[key], models[0][key], rtol=0, atol=1e-12)


def test_task_vector_round_trip() -> None:
    base, models, _ = make_inputs(n_models=1)
    tau = task_vector(base, models[0])
    assert "steps" not in tau  # integer buffers have no task vector
    back = apply_task_vector(base, tau)
    for key in base:
        torch.testing.assert_close(back[key], models[0][key])
    assert torch.equal(back["steps"], base["steps"])


def test_task_vector_of_low_precision_inputs_is_float32() -> None:
    base, models, _ = make_inputs(n_models=1, dtype=torch.bfloat16)
    assert task_vector(base, models[0])["head.weight"].dtype == torch.float32


def test_apply_task_vector_names_a_foreign_tensor() -> None:
    base, _, _ = make_inputs()
    with pytest.raises(ValueError, match="not_here"):
        apply_task_vector(base, {"not_here": torch.zeros(1)})


def test_a_bad_scaling_is_rejected() -> None:
    base, models, _ = make_inputs()
    with pytest.raises(ValueError, match="scaling"):
        task_arithmetic(base, models, scaling="big")  # type: ignore[arg-type]
