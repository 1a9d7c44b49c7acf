"""AdapterBank: per-sample routing equals running each adapter alone on its samples."""

from __future__ import annotations

import pytest
import torch

from core.adapters import (
    AdapterBank,
    BottleneckConfig,
    LoraConfig,
    SsfConfig,
    load_adapter,
)

from .models import MODEL_CASES


def _perturbed_bank(config, names=("en", "sw", "yo")) -> AdapterBank:
    model = MODEL_CASES["llama"].build()
    bank = AdapterBank(model, config, names=list(names))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return bank


@pytest.mark.parametrize(
    "config",
    [
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
        LoraConfig(r=4, use_dora=True, target_modules=["q_proj"]),
        SsfConfig(target_modules=["o_proj"]),
        BottleneckConfig(bottleneck_dim=4, target_modules=["down_proj"]),
    ],
    ids=["lora-stacked", "dora", "ssf", "bottleneck"],
)
def test_routed_batch_equals_each_adapter_alone(config, tmp_path) -> None:
    bank = _perturbed_bank(config)
    assert bank.stacked == config.stackable
    x = torch.randint(0, 64, (5, 6), generator=torch.Generator().manual_seed(2))
    ids = torch.tensor([2, 0, -1, 1, 0])
    routed = bank(x, adapter_ids=ids).logits
    with torch.inference_mode():  # the serving path (no autograd) gives the same
        torch.testing.assert_close(bank(x, adapter_ids=ids).logits, routed)
    bank.save(tmp_path)
    for row, adapter_id in enumerate(ids.tolist()):
        alone = MODEL_CASES["llama"].build()
        if adapter_id >= 0:
            load_adapter(alone, tmp_path / bank.names[adapter_id])
        expected = alone(x[row : row + 1]).logits
        torch.testing.assert_close(routed[row : row + 1], expected, atol=1e-5, rtol=1e-4)


def test_each_adapter_gets_gradient_only_from_its_samples() -> None:
    bank = _perturbed_bank(LoraConfig(r=2, target_modules=["q_proj"]))
    x = torch.randint(0, 64, (2, 5))
    bank(x, adapter_ids=bank.ids(["sw", "sw"])).logits.sum().backward()
    grad_b = bank.stack_layers["model.layers.0.self_attn.q_proj"].lora_B.grad
    per_adapter = grad_b.abs().sum(dim=(1, 2))
    assert per_adapter[bank.index("sw")] > 0
    assert per_adapter[bank.index("en")] == 0 and per_adapter[bank.index("yo")] == 0


def test_stacked_bank_needs_routing() -> None:
    bank = _perturbed_bank(LoraConfig(r=2, target_modules=["q_proj"]))
    x = torch.randint(0, 64, (1, 3))
    with pytest.raises(RuntimeError, match="adapter_ids"):
        bank.model(x)
    # Routing ends with the batch, also when the batch fails.
    bank(x, adapter_ids=torch.tensor([1]))
    with pytest.raises(ValueError, match="one id per sample"), bank.route(torch.tensor([0, 1])):
        bank.model(x)
    with pytest.raises(RuntimeError, match="adapter_ids"):
        bank.model(x)


def test_bank_save_and_reload_each_adapter(tmp_path) -> None:
    bank = _perturbed_bank(LoraConfig(r=2, target_modules=["q_proj"]))
    x = torch.randint(0, 64, (1, 5))
    expected = bank(x, adapter_ids=bank.ids(["yo"])).logits
    bank.save(tmp_path)
    fresh = MODEL_CASES["llama"].build()
    load_adapter(fresh, tmp_path / "yo", name="yo")
    torch.testing.assert_close(fresh(x).logits, expected, atol=1e-5, rtol=1e-4)
    # ...and back into a new bank, in another slot.
    other = AdapterBank(
        MODEL_CASES["llama"].build(), LoraConfig(r=2, target_modules=["q_proj"]), names=["a", "b"]
    )
    other.load(tmp_path / "yo", "b")
    torch.testing.assert_close(
        other(x, adapter_ids=other.ids(["b"])).logits, expected, atol=1e-5, rtol=1e-4
    )
    with pytest.raises(ValueError, match="expects"):
        AdapterBank(
            MODEL_CASES["llama"].build(), LoraConfig(r=4, target_modules=["q_proj"]), names=["c"]
        ).load(tmp_path / "yo", "c")


def test_mixed_ranks_per_adapter() -> None:
    model = MODEL_CASES["llama"].build()
    bank = AdapterBank(
        model,
        {
            "a": LoraConfig(r=2, target_modules=["q_proj"]),
            "b": LoraConfig(r=8, target_modules=["q_proj"]),
        },
    )
    assert bank.stack_layers["model.layers.0.self_attn.q_proj"].ranks == [2, 8]
    out = bank(torch.randint(0, 64, (2, 4)), adapter_ids=torch.tensor([0, 1])).logits
    assert out.shape == (2, 4, 64)


def test_bank_errors() -> None:
    bank = _perturbed_bank(LoraConfig(r=2, target_modules=["q_proj"]))
    x = torch.randint(0, 64, (2, 5))
    with pytest.raises(ValueError, match=r"adapter_ids must lie in \[-1, 2\]"):
        bank(x, adapter_ids=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="one id per sample"):
        bank(x, adapter_ids=torch.tensor([0, 1, 2]))
    with pytest.raises(KeyError, match="no adapter 'fr'"):
        bank.index("fr")
    with pytest.raises(ValueError, match="rewrites W0"):
        AdapterBank(MODEL_CASES["mlp"].build(), LoraConfig(r=2, init="pissa"), names=["a", "b"])
    with pytest.raises(ValueError, match="one method"):
        AdapterBank(MODEL_CASES["mlp"].build(), {"a": LoraConfig(r=2), "b": SsfConfig()})


def test_stacked_serving_in_adapter_order_matches_the_training_path() -> None:
    """One sample per adapter in id order takes the in-place batched path when serving."""
    bank = _perturbed_bank(LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    target, unit = next(iter(bank.stack_layers.items()))
    out_features = bank.model.get_submodule(target).base_layer.out_features
    assert unit.lora_B.shape == (3, out_features, 4)  # PEFT's (out, r) per adapter
    assert unit.lora_B.transpose(1, 2).is_contiguous()  # stored as (N, r, out)
    x = torch.randint(0, 64, (3, 5), generator=torch.Generator().manual_seed(4))
    ids = torch.arange(3)
    training_path = bank(x, adapter_ids=ids).logits
    with torch.inference_mode():
        torch.testing.assert_close(bank(x, adapter_ids=ids).logits, training_path)


def test_serving_skips_the_op_checks_only_when_dtypes_and_autocast_allow(monkeypatch) -> None:
    """Stacked layers serve through the unchecked in-place op when x, out and the stacks share
    a dtype outside autocast; otherwise through the checked op, which casts. Both give what
    the training path gives."""
    import core.adapters.lora_stack as lora_stack

    bank = _perturbed_bank(LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    seen = []
    for name in ("accumulate_grouped_", "multi_lora_accumulate_"):
        real = getattr(lora_stack, name)
        monkeypatch.setattr(
            lora_stack, name, lambda *a, _real=real, _name=name: seen.append(_name) or _real(*a)
        )
    x = torch.randint(0, 64, (3, 5), generator=torch.Generator().manual_seed(5))
    ids = torch.tensor([2, 0, -1])
    trained = bank(x, adapter_ids=ids).logits
    assert seen == []  # training takes neither
    with torch.inference_mode():
        torch.testing.assert_close(bank(x, adapter_ids=ids).logits, trained)
    assert set(seen) == {"accumulate_grouped_"}
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trained = bank(x, adapter_ids=ids).logits
        with torch.inference_mode():
            served = bank(x, adapter_ids=ids).logits
    assert set(seen) == {"multi_lora_accumulate_"}
    torch.testing.assert_close(served, trained)


@pytest.mark.parametrize("name", ["en", "sw"])
def test_a_batch_on_one_adapter_runs_that_adapter_alone(name, tmp_path, monkeypatch) -> None:
    """Every sample on one adapter: each stacked layer takes the fused LoRA op on views of
    that adapter's factors. The output equals the adapter loaded alone, and gradients reach
    only its slice of the stacks (mixed ranks: its own rank, not the padded one)."""
    import core.adapters.lora_stack as lora_stack

    targets = ["q_proj", "down_proj"]
    configs = {
        "en": LoraConfig(r=2, target_modules=targets),
        "sw": LoraConfig(r=4, target_modules=targets),
        "yo": LoraConfig(r=3, target_modules=targets),
    }
    bank = _perturbed_bank(configs)
    calls = []
    real = lora_stack.lora_linear
    monkeypatch.setattr(lora_stack, "lora_linear", lambda *a: calls.append(a[3].shape) or real(*a))
    x = torch.randint(0, 64, (3, 5), generator=torch.Generator().manual_seed(6))
    ids = bank.ids([name] * 3)
    routed = bank(x, adapter_ids=ids).logits
    rank = configs[name].r
    assert [shape[0] for shape in calls] == [rank] * len(bank.stack_layers)
    bank.save(tmp_path)
    alone = MODEL_CASES["llama"].build()
    load_adapter(alone, tmp_path / name)
    torch.testing.assert_close(routed, alone(x).logits, atol=1e-5, rtol=1e-4)
    with torch.inference_mode():
        torch.testing.assert_close(bank(x, adapter_ids=ids).logits, routed)
    routed.sum().backward()
    k = bank.index(name)
    for unit in bank.stack_layers.values():
        grads = unit.lora_B.grad.abs().sum(dim=(1, 2))
        assert grads[k] > 0 and int((grads > 0).sum()) == 1
        assert torch.count_nonzero(unit.lora_B.grad[k, :, rank:]) == 0
    # A batch mixing adapters takes the stacked path.
    calls.clear()
    bank(x, adapter_ids=bank.ids([name, "yo", name]))
    assert calls == []


def test_route_plan_is_shared_per_input_shape_and_checked_for_each_new_one() -> None:
    from core.adapters.lora_stack import RoutePlan

    plan = RoutePlan(torch.tensor([1, 0]), n_adapters=2)
    rows, segments = plan.for_input(torch.zeros(2, 3, 4))
    assert rows.tolist() == [1, 1, 1, 0, 0, 0]
    assert plan.for_input(torch.zeros(2, 3, 4))[1] is segments  # grouped once, then shared
    with pytest.raises(ValueError, match="one id per sample"):
        plan.for_input(torch.zeros(3, 2, 4))  # six rows again, but three samples
    rows, segments = RoutePlan(torch.zeros(0, dtype=torch.long), 2).for_input(torch.zeros(0, 4))
    assert rows.numel() == 0 and segments.width == 0


@pytest.mark.parametrize(
    "config",
    [LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]), SsfConfig()],
    ids=["lora-stacked", "ssf"],
)
@pytest.mark.parametrize(
    "widen", [{"num_beams": 3}, {"num_beams": 2, "num_return_sequences": 2}], ids=str
)
def test_generate_keeps_each_sample_on_its_adapter_when_the_batch_widens(config, widen) -> None:
    """Beam search lays out k rows per sample; each must use its sample's adapter. The
    batched result equals each sample generated alone."""
    bank = _perturbed_bank(config).eval()
    x = torch.randint(1, 64, (3, 4), generator=torch.Generator().manual_seed(3))
    ids = torch.tensor([2, -1, 0])
    kwargs = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0, **widen}
    with torch.no_grad():
        together = bank.generate(x, adapter_ids=ids, **kwargs)
        per_sample = together.shape[0] // 3
        for b in range(3):
            alone = bank.generate(x[b : b + 1], adapter_ids=ids[b : b + 1], **kwargs)
            torch.testing.assert_close(together[b * per_sample : (b + 1) * per_sample], alone)
        # The sample on -1 gets exactly the beams of the model without adapters.
        base_only = MODEL_CASES["llama"].build().eval().generate(x[1:2], **kwargs)
    torch.testing.assert_close(together[per_sample : 2 * per_sample], base_only)


def test_a_widened_batch_needs_generate_or_expand() -> None:
    bank = _perturbed_bank(LoraConfig(r=2, target_modules=["q_proj"]))
    x = torch.randint(0, 64, (2, 3))
    ids = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"bank.generate\(...\), or repeat each id"):
        bank(x.repeat_interleave(2, dim=0), adapter_ids=ids)
    with torch.no_grad(), bank.route(ids, expand=True):
        widened = bank.model(x.repeat_interleave(2, dim=0)).logits
    expected = bank(x.repeat_interleave(2, dim=0), adapter_ids=ids.repeat_interleave(2)).logits
    torch.testing.assert_close(widened, expected)
    with pytest.raises(ValueError, match="one id per sample"), bank.route(ids, expand=True):
        bank.model(torch.randint(0, 64, (3, 3)))  # 3 rows for 2 samples: not a widening
    with pytest.raises(TypeError, match="has no generate"):
        AdapterBank(MODEL_CASES["mlp"].build(), SsfConfig(), names=["a"]).generate(
            torch.zeros(1, 4), adapter_ids=torch.tensor([0])
        )


def test_lora_bank_over_convolutions_routes_per_name_units() -> None:
    """LoRA stacks hold linear layers only: a bank that also targets a 1x1 convolution keeps
    one unit per name (routed), and each sample still sees its adapter alone."""

    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 1), torch.nn.Flatten(), torch.nn.Linear(4 * 2 * 2, 5)
        )

    config = LoraConfig(r=2, target_modules=["0", "2"])
    bank = AdapterBank(build(), config, names=["a", "b"])
    assert not bank.stacked
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in bank.model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    x = torch.randn(3, 3, 2, 2, generator=gen)
    ids = torch.tensor([1, -1, 0])
    routed = bank(x, adapter_ids=ids)
    for row, adapter_id in enumerate(ids.tolist()):
        with bank.route(torch.tensor([adapter_id])):
            alone = bank.model(x[row : row + 1])
        torch.testing.assert_close(routed[row : row + 1], alone)
    torch.testing.assert_close(routed[1:2], build()(x[1:2]))  # -1: the base model
    assert not torch.allclose(routed[0:1], build()(x[0:1]))
