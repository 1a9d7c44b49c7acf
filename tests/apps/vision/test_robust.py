import lightning.pytorch as pl
import torch

from apps.vision.module import VisionModule
from apps.vision.robust import evaluate_robustness, soups, wise_ft_sweep, write_results

from .conftest import fit


def test_wise_ft_endpoints_reproduce_zero_shot_and_fine_tuned(tiny_data, tiny_model_kwargs):
    pl.seed_everything(0)
    module = VisionModule(**tiny_model_kwargs)
    sets = tiny_data.eval_sets()
    x = tiny_data.sets["test"].tensors[0][:16].float()
    with torch.no_grad():
        zs_logits = module(x).clone()
    fit(module, tiny_data)
    with torch.no_grad():
        ft_logits = module(x).clone()
    assert not torch.allclose(zs_logits, ft_logits)
    finetuned = {k: v.clone() for k, v in module.model.state_dict().items()}
    rows, best = wise_ft_sweep(
        module.model,
        module.initial_state,
        finetuned,
        {"id_val": sets["id_val"]},
        alphas=[0.0, 0.5, 1.0],
    )
    assert [r["alpha"] for r in rows] == [0.0, 0.5, 1.0] and best in (0.0, 0.5, 1.0)
    from core.merging import wise_ft

    for alpha, ref in ((0.0, zs_logits), (1.0, ft_logits)):
        module.model.load_state_dict(wise_ft(module.initial_state, finetuned, alpha=alpha))
        with torch.no_grad():
            assert torch.equal(module(x), ref)
    # the sweep leaves the fine-tuned weights in place
    module.model.load_state_dict(finetuned)


def test_soups_never_score_below_the_best_ingredient(tiny_data, tiny_model_kwargs):
    states = []
    for seed, lr in ((0, 1e-3), (1, 3e-3)):
        pl.seed_everything(seed)
        m = VisionModule(
            optimizer=lambda p, lr=lr: torch.optim.AdamW(p, lr=lr), **tiny_model_kwargs
        )
        states.append({k: v.clone() for k, v in fit(m, tiny_data).model.state_dict().items()})
    val = tiny_data.eval_sets()["id_val"]
    out = soups(m.model, states, val)
    assert out["greedy_val"] >= max(out["scores"])
    for k in states[0]:
        if states[0][k].is_floating_point():
            assert torch.allclose(out["uniform"][k], (states[0][k] + states[1][k]) / 2, atol=1e-6)


def test_evaluate_robustness_rows_endpoints_and_files(tiny_data, tiny_model_kwargs, tmp_path):
    pl.seed_everything(0)
    module = fit(VisionModule(**tiny_model_kwargs), tiny_data)
    tuned = {k: v.clone() for k, v in module.model.state_dict().items()}
    sets = tiny_data.eval_sets()
    result = evaluate_robustness(
        module.model, module.initial_state, sets, "ft", [0.0, 0.5, 1.0], tmp_path / "wiseft"
    )
    rows = {r["name"]: r for r in result.rows}
    assert list(rows) == [
        "zeroshot",
        "ft",
        "wiseft_0.0",
        "wiseft_0.5",
        "wiseft_1.0",
        "wiseft_chosen",
    ]
    # WiSE-FT at alpha 0 / 1 is exactly the zero-shot / fine-tuned model
    for name, alpha in (("zeroshot", "0.0"), ("ft", "1.0")):
        assert rows[name]["acc"] == rows[f"wiseft_{alpha}"]["acc"]
        assert rows[name]["ece"] == rows[f"wiseft_{alpha}"]["ece"]
    assert rows["zeroshot"]["acc"] != rows["ft"]["acc"]
    assert set(rows["zeroshot"]["acc"]) == {"id_val", "id_test", *result.shifts}
    assert rows["wiseft_chosen"]["alpha"] == result.best_alpha
    assert {r["method"] for r in result.rows} == {"ft"}
    assert [r["name"] for r in result.summary_rows()] == ["zeroshot", "ft", "wiseft_chosen"]
    assert set(result.calibration) == {"zero-shot (ID)", "ft (ID)"}
    assert len(list((tmp_path / "wiseft").glob("alpha_*.safetensors"))) == 3
    for k, v in module.model.state_dict().items():  # the model holds the tuned weights again
        assert torch.equal(v, tuned[k]), k
    written = write_results(result, tmp_path)
    assert [p.name for p in written] == ["results.jsonl", "wiseft.json"]
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == len(result.rows)
    # without a sweep: two rows, no wiseft.json
    bare = evaluate_robustness(module.model, module.initial_state, sets, "ft", [])
    assert [r["name"] for r in bare.rows] == ["zeroshot", "ft"] and bare.best_alpha is None
    assert [p.name for p in write_results(bare, tmp_path / "bare")] == ["results.jsonl"]
