"""DigitsClassifier: the MLP, where LoRA goes, what the steps return."""

from __future__ import annotations

import torch

from core.adapters import LoraConfig, adapter_tensors
from core.examples.module import DigitsClassifier


def test_lora_goes_on_the_hidden_layers_and_the_head_trains() -> None:
    module = DigitsClassifier(
        adapter=LoraConfig(r=4, target_modules=["fc1", "fc2"]), modules_to_save=["head"]
    )
    assert sorted(adapter_tensors(module.model, "default")) == [
        "fc1.lora_A.weight",
        "fc1.lora_B.weight",
        "fc2.lora_A.weight",
        "fc2.lora_B.weight",
    ]
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable == {
        "fc1.adapters.default.lora_A.weight",
        "fc1.adapters.default.lora_B.weight",
        "fc2.adapters.default.lora_A.weight",
        "fc2.adapters.default.lora_B.weight",
        "head.weight",
        "head.bias",
    }


def test_steps_return_loss_accuracy_and_predictions() -> None:
    module = DigitsClassifier(hidden_size=16)
    x, y = torch.rand(5, 64), torch.tensor([0, 1, 2, 3, 4])
    assert module(x).shape == (5, 10)
    out = module.shared_step((x, y), "val")
    assert out["loss"].ndim == 0 and 0 <= out["acc"].item() <= 1 and out["batch_size"] == 5
    pred = module.shared_step((x, y), "predict")
    assert set(pred) == {"preds", "target"} and pred["preds"].shape == (5,)
