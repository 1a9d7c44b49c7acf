"""The action heads (apps/robotics/policies), each put through the same checks, as LeRobot does.

Every head: output shapes, a finite loss that falls while overfitting one fixed batch,
padded steps left out of the loss, predictions inside [-1, 1]. Then the head-specific
promises: the token head decodes a fitted target to within half a bin (with the same bins as
``ActionTokenizer``), and the diffusion head samples deterministically from its seed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apps.robotics.actions import ActionTokenizer
from apps.robotics.policies import POLICY_HEADS, ActionHead, DiffusionHead, TokenHead, make_head

F_DIM, A_DIM, CHUNK, BATCH = 32, 2, 4, 8
SMALL = {
    "tokens": {"hidden_dim": 64, "token_dim": 16},
    "l1_chunk": {"hidden_dim": 64},
    "diffusion": {"hidden_dim": 64, "blocks": 2, "time_dim": 16},
}


def fixed_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(BATCH, F_DIM, generator=g)
    actions = torch.rand(BATCH, CHUNK, A_DIM, generator=g) * 1.8 - 0.9
    pad = torch.zeros(BATCH, CHUNK, dtype=torch.bool)
    pad[::2, -1] = True  # half the chunks ran past their episode's end
    pad[1, 2:] = True
    return features, actions, pad


def seeded_loss(head: ActionHead, *args: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(123)  # the diffusion loss draws steps and noise
    return head.loss(*args)


@pytest.mark.parametrize("name", sorted(POLICY_HEADS))
def test_every_head(name):
    torch.manual_seed(0)
    head = make_head(name, F_DIM, A_DIM, CHUNK, **SMALL[name])
    assert isinstance(head, POLICY_HEADS[name]) and head.name == name
    features, actions, pad = fixed_batch()

    # Shapes and range.
    pred = head.predict(features)
    assert pred.shape == (BATCH, CHUNK, A_DIM) and pred.dtype == torch.float32
    assert pred.min() >= -1.0 and pred.max() <= 1.0
    loss = head.loss(features, actions, pad)
    assert loss.ndim == 0 and torch.isfinite(loss)

    # Padded steps do not count: garbage (even NaN) in them leaves the loss unchanged.
    garbage = actions.clone()
    garbage[pad] = torch.tensor([5.0, float("nan")])
    assert torch.equal(
        seeded_loss(head, features, actions, pad), seeded_loss(head, features, garbage, pad)
    )
    # ... while a change in an unpadded step does change it.
    moved = actions.clone()
    moved[0, 0] = -actions[0, 0]
    assert not torch.equal(
        seeded_loss(head, features, actions, pad), seeded_loss(head, features, moved, pad)
    )

    # Overfitting the fixed batch lowers the loss.
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    losses = []
    for _ in range(50):
        loss = head.loss(features, actions, pad)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10]), losses
    pred = head.predict(features)
    assert pred.shape == (BATCH, CHUNK, A_DIM)
    assert pred.min() >= -1.0 and pred.max() <= 1.0


def test_unknown_head_and_bad_option_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown policy head 'transformer'.*diffusion"):
        make_head("transformer", F_DIM, A_DIM, CHUNK)
    with pytest.raises(ValueError, match="does not take"):
        make_head("l1_chunk", F_DIM, A_DIM, CHUNK, bins=256)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        make_head("l1_chunk", F_DIM, A_DIM, 0)


def test_shape_errors_name_the_expected_shape():
    head = make_head("l1_chunk", F_DIM, A_DIM, CHUNK)
    features, actions, pad = fixed_batch()
    with pytest.raises(ValueError, match=r"features must be \(B, 32\)"):
        head.predict(features[:, :5])
    with pytest.raises(ValueError, match=r"actions must be \(B, chunk_size, action_dim\)"):
        head.loss(features, actions[:, :2], pad)
    with pytest.raises(ValueError, match="pad_mask must be"):
        head.loss(features, actions, pad[:, :2])


def test_token_bins_are_the_tokenizers():
    head = TokenHead(F_DIM, A_DIM, CHUNK, bins=256)
    tokenizer = ActionTokenizer([-1.0] * A_DIM, [1.0] * A_DIM, bins=256)
    values = torch.linspace(-1.2, 1.2, 999).reshape(-1, 1).expand(-1, A_DIM)
    assert np.array_equal(head.tokens(values).numpy(), tokenizer.encode(values.numpy()))
    every = np.arange(256)[:, None].repeat(A_DIM, axis=1)
    assert np.array_equal(head.centres.numpy(), tokenizer.decode(every)[:, 0])


def test_token_head_decodes_a_fitted_target_within_half_a_bin():
    torch.manual_seed(0)
    head = TokenHead(F_DIM, A_DIM, CHUNK, hidden_dim=64, token_dim=16)
    features, actions, pad = fixed_batch()
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(400):
        loss = head.loss(features, actions, pad)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.02:
            break
    assert loss.item() < 0.05
    error = (head.predict(features) - actions).abs()[~pad]
    half_bin = 1.0 / 256  # bins of width 2/256 over [-1, 1]
    assert error.max() <= half_bin * (1 + 1e-4)
    # The "expected" decoding is the softmax-weighted mean of the bin centres.
    head.decode = "expected"
    with torch.no_grad():
        probs = head.logits(features).softmax(dim=-1)
    assert torch.allclose(head.predict(features), (probs * head.centres).sum(-1), atol=1e-6)
    with pytest.raises(ValueError, match="decode"):
        TokenHead(F_DIM, A_DIM, CHUNK, decode="sample")


def test_diffusion_is_deterministic_given_its_seed():
    features, _, _ = fixed_batch()
    torch.manual_seed(0)
    head = DiffusionHead(F_DIM, A_DIM, CHUNK, hidden_dim=64, blocks=2, seed=7)
    first = head.predict(features)
    torch.randn(100)  # the global RNG moving on changes nothing
    assert torch.equal(first, head.predict(features))
    head.seed = 8
    assert not torch.equal(first, head.predict(features))
    g = torch.Generator().manual_seed(7)
    assert torch.equal(first, head.predict(features, generator=g))
    assert head.inference_timesteps() == [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]
    abar = head.alphas_cumprod
    assert abar[0] > 0.99 and abar[-1] < 1e-3 and (abar[1:] < abar[:-1]).all()
    assert "alphas_cumprod" not in head.state_dict()  # derived, not saved
