"""Snapshot helpers: copies that do not follow the model, eval mode restored, state calls."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from core.regularizers import TensorStore
from core.regularizers.snapshot import call_with_state, eval_mode, take_snapshot

from .toys import EncoderHead, blobs, sgd_steps


def test_take_snapshot_copies_parameters_and_buffers_and_replaces_the_old_ones() -> None:
    model = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4))
    store = TensorStore()
    store["stale"] = torch.ones(1)
    take_snapshot(model, store)
    expected = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    assert store.keys() == expected
    for name, tensor in model.state_dict().items():
        assert torch.equal(store[name], tensor)
        assert not store[name].requires_grad
    before = store["0.weight"].clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)  # the snapshot is a copy, not a view of the weights
    assert torch.equal(store["0.weight"], before)


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_restores_the_previous_mode_even_after_an_error(training: bool) -> None:
    model = EncoderHead(dropout=0.5).train(training)
    with eval_mode(model) as inside:
        assert inside is model and not model.training and not model.encoder[2].training
    assert model.training is training and model.encoder[2].training is training
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        raise RuntimeError("boom")
    assert model.training is training


def test_call_with_state_runs_the_module_on_the_given_tensors() -> None:
    model = EncoderHead()
    x, y = blobs(12)
    store = TensorStore()
    take_snapshot(model, store)
    before = model(x).detach()
    sgd_steps(model, x, y)
    assert not torch.allclose(model(x), before)  # the live weights moved
    torch.testing.assert_close(call_with_state(model, dict(store.items()), x), before)


def test_call_with_state_passes_a_dict_of_inputs_as_keyword_arguments() -> None:
    class Keywords(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, input_ids: Tensor, offset: Tensor) -> Tensor:
            return self.scale * input_ids + offset

    model = Keywords()
    inputs = {"input_ids": torch.tensor([1.0, 2.0]), "offset": torch.tensor([10.0, 20.0])}
    out = call_with_state(model, {"scale": torch.tensor(3.0)}, inputs)
    torch.testing.assert_close(out, torch.tensor([13.0, 26.0]))
