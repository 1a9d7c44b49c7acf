"""Continual learning over task families: the policy's Fisher, family subsets, the adapter
bank's zero forgetting, merging, the whole study."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from apps.robotics.behaviour_cloning import (
    Source,
    build_policy,
    draw_batch,
    rollout_dataset,
    train_policy,
)
from apps.robotics.continual import (
    FIGURE,
    RoutedPolicy,
    adapter_bank,
    adapter_deltas,
    family_subset,
    forgetting_after,
    main,
    merged_policy,
    rollout_states,
    run,
    train_only,
)
from apps.robotics.data import family_of
from apps.robotics.evaluation import ExpertPolicy, rollout
from apps.robotics.fisher import policy_fisher
from apps.robotics.model import fake_text_tower

from .small_policy import SMALL, small_policy


@pytest.fixture(scope="module")
def policy():
    return small_policy()


@pytest.fixture(scope="module")
def data(policy):
    """Expert rollouts of every family, as training samples."""
    episodes = []
    for family in ("which_object", "which_target", "ordering"):
        result = rollout(
            ExpertPolicy(), [700, 701], env_options={"families": [family]}, num_envs=2,
            record_transitions=True, progress=False,
        )  # fmt: skip
        episodes += result.episodes
    return rollout_dataset(policy, episodes, chunk_size=4)


def _batch(data, n=6, seed=0):
    return draw_batch([Source(data)], n, torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- Fisher
def test_fisher_of_the_last_layer_matches_its_closed_form(policy, data):
    """mu = tanh(W h + b): each output k depends on row k of W alone, so every label choice
    gives F[k, j] = (1 - mu_k^2)^2 h_j^2 (mean over samples), F_b[k] = (1 - mu_k^2)^2, and
    padded steps add nothing."""
    last = policy.head.net[-1]
    params = {"head.net.4.weight": last.weight, "head.net.4.bias": last.bias}
    batch = _batch(data)
    batch["action_pad"][0, 2:] = True  # sample 0: only its first two steps count
    inputs = []
    handle = last.register_forward_hook(lambda m, args, out: inputs.append(args[0].detach()))
    with torch.no_grad():
        policy.eval()
        mu = policy.head(policy.features(batch["image"], batch["proprio"], batch["instruction"]))
    handle.remove()
    h = inputs[0]  # (B, hidden)
    slope = (1 - mu.reshape(len(h), -1) ** 2) ** 2  # (B, chunk * A)
    valid = (~batch["action_pad"]).repeat_interleave(2, dim=1).float()
    slope = slope * valid
    expected_w = (slope[:, :, None] * h[:, None, :] ** 2).mean(0)
    expected_b = slope.mean(0)
    for labels in ("expected", "sampled", "true"):
        gen = torch.Generator().manual_seed(1)
        fisher = policy_fisher(policy, [batch], params, gen, labels=labels)
        torch.testing.assert_close(fisher["head.net.4.weight"], expected_w, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(fisher["head.net.4.bias"], expected_b, rtol=1e-4, atol=1e-7)


def test_sampled_fisher_averages_to_the_expected_one_inside_the_network(policy, data):
    """Deeper layers mix outputs: the one-draw estimate is noisy, its mean the exact one."""
    layer = policy.encoder.mlp[0]
    params = {"w": layer.weight}
    batch = _batch(data, n=1, seed=3)
    exact = policy_fisher(policy, [batch], params, labels="expected")["w"]
    gen = torch.Generator().manual_seed(0)
    draws = policy_fisher(policy, [batch] * 300, params, gen, labels="sampled")["w"]
    one = policy_fisher(policy, [batch], params, torch.Generator().manual_seed(5))["w"]
    assert not torch.allclose(one, exact, rtol=0.05)  # one draw is not the expectation
    assert (draws - exact).abs().sum() / exact.abs().sum() < 0.15
    assert policy_fisher(policy, [batch] * 5, params, max_samples=2)["w"].shape == exact.shape


def test_fisher_errors(policy, data):
    batch = _batch(data)
    params = {"b": policy.head.net[-1].bias}
    with pytest.raises(ValueError, match="labels"):
        policy_fisher(policy, [batch], params, labels="empirical")
    with pytest.raises(ValueError, match="no samples"):
        policy_fisher(policy, [], params)
    tokens = build_policy(0, chunk_size=4, text_tower=fake_text_tower(), **SMALL)
    tokens.head.name = "tokens"
    with pytest.raises(ValueError, match="l1_chunk"):
        policy_fisher(tokens, [batch], params)


def test_rollout_states_are_the_policys_own_closed_loop_steps(policy):
    """EWC's Fisher on the states the policy visits: its rollouts on the family, recorded."""
    states = rollout_states(policy, "ordering", episodes=2, seed=0, index=1, num_envs=2)
    assert len(states) > 0
    assert {family_of(states[i]["instruction"]) for i in range(len(states))} == {"ordering"}
    again = rollout_states(policy, "ordering", episodes=2, seed=0, index=1, num_envs=2)
    assert torch.equal(states.proprio, again.proprio)  # seeded
    other = rollout_states(policy, "ordering", episodes=2, seed=0, index=2, num_envs=2)
    assert not torch.equal(states.proprio[:5], other.proprio[:5])
    batches = [draw_batch([Source(states)], 4, torch.Generator().manual_seed(0))]
    fisher = policy_fisher(policy, batches, {"b": policy.head.net[-1].bias})
    assert fisher["b"].shape == (8,) and (fisher["b"] > 0).all()


# --------------------------------------------------------------------------- data
def test_family_subset_serves_only_that_family(data):
    for family in ("which_object", "ordering"):
        subset = family_subset(data, [family])
        assert 0 < len(subset) < len(data)
        assert {family_of(subset[i]["instruction"]) for i in range(len(subset))} == {family}
    both = family_subset(data, ["which_object", "ordering"])
    assert len(both) == len(family_subset(data, ["which_object"])) + len(
        family_subset(data, ["ordering"])
    )
    only = family_subset(data, ["which_object"])
    with pytest.raises(ValueError, match="no demonstration of families"):
        family_subset(only, ["ordering"])


# --------------------------------------------------------------------------- adapters
def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_training_one_adapter_leaves_the_base_and_the_other_adapters_untouched(policy, data):
    """Zero forgetting by construction: after training family b's adapter, every tensor the
    base and adapter a use is bit-identical, and so are their predictions."""
    model = copy.deepcopy(policy)
    bank = adapter_bank(model, ["a", "b"], rank=2)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # adapter a as if trained: a non-zero delta
        for layer in bank.layers:
            for p in layer.adapters["a"].parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    obs = rollout(ExpertPolicy(), [900], num_envs=1, record_transitions=True, progress=False)
    episode = obs.episodes[0]
    images, proprio = np.stack(episode.frames[:3]), episode.proprio[:3]
    instructions = [episode.instruction] * 3

    def predictions():
        return [
            RoutedPolicy(model, bank, i).predict_chunk(images, proprio, instructions)
            for i in (-1, 0, 1)
        ]

    before_state, before = _state(model), predictions()
    train_only(bank, "b")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".b." in n or n.endswith(".b") or "adapters.b" in n for n in trainable)

    def routed(batch):
        with bank.route(torch.full((len(batch["instruction"]),), bank.index("b"))):
            return model.loss(batch)

    train_policy(model, [Source(data)], 5, lr=1e-2, batch_size=8, loss_fn=routed, progress=False)
    after_state, after = _state(model), predictions()
    changed = sorted(k for k in before_state if not torch.equal(before_state[k], after_state[k]))
    assert changed and all("adapters.b." in k for k in changed), changed[:5]
    np.testing.assert_array_equal(after[0], before[0])  # the base (first family)
    np.testing.assert_array_equal(after[1], before[1])  # adapter a
    assert not np.array_equal(after[2], before[2])  # adapter b learned


def test_merging_adds_the_adapters_deltas_to_the_base(policy):
    base_policy = copy.deepcopy(policy)
    model = copy.deepcopy(policy)
    bank = adapter_bank(model, ["a", "b"], rank=2)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    base, tuned = adapter_deltas(bank)
    key = "head.net.4.weight"
    layer = model.get_submodule("head.net.4")
    delta_a = layer.adapters["a"].delta_matrix().detach()
    torch.testing.assert_close(tuned[0][key], base[key] + delta_a)
    merged = merged_policy(base_policy, bank, "task_arithmetic")  # scaling 1: the sum
    expected = base[key] + (tuned[0][key] - base[key]) + (tuned[1][key] - base[key])
    torch.testing.assert_close(merged.get_submodule("head.net.4").weight, expected)
    conv = "encoder.image.top.0.0.conv_pw.weight"
    assert merged.state_dict()[conv].shape == base_policy.state_dict()[conv].shape
    ties = merged_policy(base_policy, bank, "ties")
    assert not torch.equal(ties.get_submodule("head.net.4").weight, expected)
    untouched = "encoder.image.top.0.0.conv_dw.weight"
    assert torch.equal(ties.state_dict()[untouched], base_policy.state_dict()[untouched])
    with pytest.raises(ValueError, match="unknown merge"):
        merged_policy(base_policy, bank, "average_of_everything")


# --------------------------------------------------------------------------- the study
def test_forgetting_after_each_family_sees_a_family_forgotten_then_relearned():
    R = [[0.40, 0.03, 0.00], [0.00, 0.17, 0.00], [0.68, 0.00, 0.15]]
    after = forgetting_after(R)
    assert after[0] == pytest.approx(0.40)  # family 0 lost after family 1
    assert after[1] == pytest.approx(((0.40 - 0.68) + (0.17 - 0.00)) / 2)  # then relearned


def test_whole_study_writes_matrices_and_report(tmp_path):
    out = tmp_path / "continual"
    payload = run(
        out, demos_per_family=5, first_steps=3, steps=2, eval_episodes=2, num_envs=2,
        fisher_samples=4, progress=False, cache_dir=str(tmp_path / "cache"),
        text_tower=fake_text_tower(), policy_options=SMALL,
    )  # fmt: skip
    assert set(payload["methods"]) == {"naive", "ewc", "replay", "adapters"}
    rows = {m: r["R"] for m, r in payload["methods"].items()}
    for method, R in rows.items():
        assert np.asarray(R).shape == (3, 3)
        assert R[0] == rows["naive"][0]  # one shared first family
        assert set(payload["methods"][method]["metrics"]) >= {"forgetting", "backward_transfer"}
        assert len(payload["methods"][method]["forgetting_after"]) == 2
    assert len(payload["methods"]["ewc"]["ewc_penalty"]) == 2
    adapters = np.asarray(rows["adapters"])
    for t in range(3):  # earlier families keep their success exactly
        np.testing.assert_array_equal(adapters[t:, t], adapters[t, t])
    assert set(payload["merged"]) == {"task_arithmetic", "ties"}
    assert payload["separate_adapters"] == rows["adapters"][-1]
    assert sum(payload["settings"]["demos_by_family"].values()) == 15
    saved = json.loads((out / "continual.json").read_text())
    assert saved["families"] == ["which_object", "which_target", "ordering"]
    assert (out / FIGURE).stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "## adapters" in report and "merged: ties" in report


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"families": ["ordering", "ordering"]}, "two different families"),
        ({"families": ["which_object", "stacking"]}, "stacking"),
        ({"methods": ["naive", "sgd"]}, "sgd"),
        ({"methods": ["naive"]}, "add 'adapters'"),
        ({"merges": ["average_of_everything"]}, "average_of_everything"),
        ({"fisher_states": "replays"}, "fisher_states"),
    ],
)
def test_bad_settings_are_refused_by_name(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        run(tmp_path / "x", **options)


def test_command_line_refuses_bad_input(capsys):
    with pytest.raises(SystemExit):
        main(["--families", "ordering", "ordering", "--quiet"])
    assert "two different families" in capsys.readouterr().err
