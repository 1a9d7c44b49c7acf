"""EWC: Fisher against the closed form, the batch-averaging bug, offline/online penalties."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.regularizers import EWC, OnlineEWC, per_sample_fisher

from .toys import EncoderHead, batches, blobs


def _softmax_regression(seed: int = 0) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Linear(3, 4)
    x = torch.randn(40, 3)
    y = torch.randint(0, 4, (40,))
    return model, x, y


def _closed_form_empirical(model: nn.Linear, x, y) -> dict[str, torch.Tensor]:
    """d log p(y|x) / d logits = onehot(y) - p; W gets its outer product with x."""
    with torch.no_grad():
        g = F.one_hot(y, 4).float() - torch.softmax(model(x), -1)
    return {
        "weight": (g[:, :, None] * x[:, None, :]).pow(2).mean(0),
        "bias": g.pow(2).mean(0),
    }


def _closed_form_true(model: nn.Linear, x) -> dict[str, torch.Tensor]:
    """E_{y~p}[(onehot(y) - p)_k^2] = p_k (1 - p_k), so F_W = mean p_k(1-p_k) x_i^2."""
    with torch.no_grad():
        p = torch.softmax(model(x), -1)
    v = p * (1 - p)
    return {"weight": (v[:, :, None] * x[:, None, :].pow(2)).mean(0), "bias": v.mean(0)}


@pytest.mark.parametrize("batch_size", [1, 7, 40])
def test_empirical_fisher_matches_closed_form_for_any_batch_size(batch_size: int) -> None:
    model, x, y = _softmax_regression()
    fisher = per_sample_fisher(model, batches(x, y, batch_size), labels="true")
    expected = _closed_form_empirical(model, x, y)
    for name in ("weight", "bias"):
        torch.testing.assert_close(fisher[name], expected[name], atol=1e-6, rtol=1e-5)


def test_fisher_is_not_the_square_of_a_batch_averaged_gradient() -> None:
    """The known bug squares mean_n g_n instead of averaging g_n^2; the two differ a lot."""
    model, x, y = _softmax_regression()
    fisher = per_sample_fisher(model, [(x, y)], labels="true")
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()  # batch-averaged gradient
    buggy = model.weight.grad.pow(2)
    correct = _closed_form_empirical(model, x, y)["weight"]
    torch.testing.assert_close(fisher["weight"], correct, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(fisher["weight"], buggy, rtol=0.1)
    assert (fisher["weight"] - buggy).abs().max() > 10 * buggy.abs().max() * 0.1


def test_sampled_fisher_converges_to_the_true_fisher_closed_form() -> None:
    model, x, _ = _softmax_regression()
    x = x[:4].repeat(5000, 1)  # many label draws per input
    gen = torch.Generator().manual_seed(0)
    fisher = per_sample_fisher(model, [(x, None)], labels="sampled", generator=gen, chunk_size=None)
    expected = _closed_form_true(model, x[:4])
    for name in ("weight", "bias"):
        torch.testing.assert_close(fisher[name], expected[name], atol=0.02, rtol=0.05)
    # and the empirical Fisher with fixed (wrong) labels is a different quantity
    wrong = torch.zeros(len(x), dtype=torch.long)
    empirical = per_sample_fisher(model, [(x, wrong)], labels="true")
    assert not torch.allclose(empirical["weight"], expected["weight"], atol=0.02, rtol=0.05)


def test_sampled_fisher_is_reproducible_with_a_seeded_generator() -> None:
    model, x, _ = _softmax_regression()
    a = per_sample_fisher(model, [(x, None)], generator=torch.Generator().manual_seed(3))
    b = per_sample_fisher(model, [(x, None)], generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_vmap_fisher_matches_a_per_sample_autograd_loop_on_an_mlp() -> None:
    model = EncoderHead()
    x, y = blobs(20)
    fisher = per_sample_fisher(model, batches(x, y, 8), labels="true", chunk_size=3)
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(len(y)):
        model.zero_grad()
        F.log_softmax(model(x[i : i + 1]), -1)[0, y[i]].backward()
        for n, p in model.named_parameters():
            expected[n] += p.grad.pow(2) / len(y)
    for n in expected:
        torch.testing.assert_close(fisher[n], expected[n], atol=1e-6, rtol=1e-4)


class _NoFunctorchSquare(torch.autograd.Function):
    """x * 1 with an old-style forward(ctx, ...): torch.func cannot transform it."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g


class _CustomOpRegression(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3, 4)

    def forward(self, x):
        return _NoFunctorchSquare.apply(self.lin(x))


def test_models_that_cannot_be_vmapped_fall_back_to_an_exact_per_sample_loop() -> None:
    model = _CustomOpRegression()
    x = torch.randn(12, 3)
    y = torch.randint(0, 4, (12,))
    with pytest.raises(RuntimeError):
        per_sample_fisher(model, [(x, y)], labels="true", per_sample="vmap")
    with pytest.warns(UserWarning, match="cannot be vmapped"):
        fisher = per_sample_fisher(model, batches(x, y, 5), labels="true")
    expected = _closed_form_empirical(model.lin, x, y)
    torch.testing.assert_close(fisher["lin.weight"], expected["weight"], atol=1e-6, rtol=1e-5)
    looped = per_sample_fisher(EncoderHead(), [blobs(10)], labels="true", per_sample="loop")
    vmapped = per_sample_fisher(EncoderHead(), [blobs(10)], labels="true", per_sample="vmap")
    torch.testing.assert_close(looped, vmapped, atol=1e-6, rtol=1e-4)


def test_model_is_in_eval_mode_while_estimating_and_mode_is_restored() -> None:
    noisy = EncoderHead(dropout=0.5)
    clean = EncoderHead(dropout=0.0)  # same seed, same weights
    x, y = blobs(24)
    noisy.train()
    fisher = per_sample_fisher(noisy, [(x, y)], labels="true")
    assert noisy.training
    expected = per_sample_fisher(clean, [(x, y)], labels="true")
    torch.testing.assert_close(fisher, expected)


def test_subsampling_uses_the_first_max_samples() -> None:
    model, x, y = _softmax_regression()
    sub = per_sample_fisher(model, batches(x, y, 8), labels="true", max_samples=10)
    expected = _closed_form_empirical(model, x[:10], y[:10])
    torch.testing.assert_close(sub["weight"], expected["weight"], atol=1e-6, rtol=1e-5)


def test_token_model_fisher_sums_log_likelihood_over_labelled_positions() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 5)  # applied per position: (B, T, 3) -> (B, T, 5)
    x = torch.randn(6, 4, 3)
    y = torch.randint(0, 5, (6, 4))
    y[:, -1] = -100
    fisher = per_sample_fisher(model, [(x, y)], labels="true")
    expected = torch.zeros_like(model.weight)
    for i in range(6):
        model.zero_grad()
        logp = F.log_softmax(model(x[i]), -1)
        logp[:3].gather(-1, y[i, :3, None]).sum().backward()
        expected += model.weight.grad.pow(2) / 6
    torch.testing.assert_close(fisher["weight"], expected, atol=1e-6, rtol=1e-4)


def test_offline_penalty_keeps_one_term_per_task() -> None:
    model = EncoderHead()
    x, y = blobs()
    ewc = EWC(lambda_=3.0, labels="true")
    ewc.update(model, batches(x, y))
    f1, a1 = ewc.fisher_of(0), {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    ewc.update(model, batches(x, y))
    f2, a2 = ewc.fisher_of(1), {n: p.detach().clone() for n, p in model.named_parameters()}
    assert ewc.terms() == [0, 1]
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.9)
    params = dict(model.named_parameters())
    expected = sum(
        (f[n] * (params[n] - a[n]).pow(2)).sum() for f, a in ((f1, a1), (f2, a2)) for n in f
    )
    torch.testing.assert_close(ewc.penalty(model), 1.5 * expected)


def test_online_ewc_decays_the_old_fisher_and_moves_the_anchor() -> None:
    model = EncoderHead()
    x, y = blobs()
    ewc = OnlineEWC(lambda_=2.0, gamma=0.5, labels="true")
    ewc.update(model, batches(x, y))
    f1 = ewc.fisher_of()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2)
    f_new = per_sample_fisher(model, batches(x, y), labels="true")
    ewc.update(model, batches(x, y))
    assert ewc.terms() == [0]
    for n, f in ewc.fisher_of().items():
        torch.testing.assert_close(f, 0.5 * f1[n] + f_new[n])
    assert ewc.penalty(model).item() == 0.0  # anchor = the current weights
    with torch.no_grad():
        model.head.bias.add_(1.0)
    expected = (ewc.fisher_of()["head.bias"]).sum()  # (lambda/2) * sum F * 1^2
    torch.testing.assert_close(ewc.penalty(model), expected)


def test_ewc_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match=r"labels='model'.*'sampled'.*'true'"):
        EWC(labels="model")
    with pytest.raises(ValueError, match="YAML reads an unquoted true"):
        EWC(labels=True)
    with pytest.raises(ValueError, match="mode='both'"):
        EWC(mode="both")
    with pytest.raises(ValueError, match="needs data"):
        EWC().update(EncoderHead())
    with pytest.raises(ValueError, match="max_samples=0"):
        per_sample_fisher(EncoderHead(), [], max_samples=0)
    with pytest.raises(ValueError, match="no samples"):
        per_sample_fisher(EncoderHead(), [])
    with pytest.raises(ValueError, match="mode='online'"):
        OnlineEWC(mode="offline")


def test_custom_fisher_fn_is_stored_and_penalised_in_closed_form() -> None:
    """A regression model brings its own Fisher estimator; EWC stores it and penalises
    0.5 * lambda * sum F (theta - theta*)^2 with it."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    seen = {}

    def fisher_fn(m, data, params, generator):
        seen["data"], seen["generator"] = data, generator
        return {n: torch.full_like(p, float(i + 1)) for i, (n, p) in enumerate(params.items())}

    ewc = EWC(lambda_=4.0, fisher_fn=fisher_fn)
    ewc.update(model, data=["batch"])
    assert seen["data"] == ["batch"] and isinstance(seen["generator"], torch.Generator)
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        model.weight.add_(0.5)
        model.bias.sub_(1.0)
    expected = 0.5 * 4.0 * (1.0 * (0.5**2) * 6 + 2.0 * 1.0 * 2)
    torch.testing.assert_close(ewc.penalty(model), torch.tensor(expected))
    assert torch.equal(ewc.anchor["0/weight"], anchor["weight"])

    bad = EWC(fisher_fn=lambda m, d, params, g: {"weight": torch.ones(3)})
    with pytest.raises(ValueError, match="no Fisher for"):
        bad.update(model, data=[1])
    wrong = EWC(fisher_fn=lambda m, d, params, g: {n: torch.ones(1) for n in params})
    with pytest.raises(ValueError, match="shape"):
        wrong.update(model, data=[1])
