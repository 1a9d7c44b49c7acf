import json
from pathlib import Path

import pytest

from apps.vision.robust import DEFAULT_ALPHAS
from apps.vision.train import CONFIG_DIR, main

from .conftest import TINY_DATA, TINY_MODEL


def _tiny_args(root: Path, cache_dir: str) -> list[str]:
    args = [
        "--trainer.max_epochs",
        "1",
        "--trainer.default_root_dir",
        str(root),
        "--trainer.enable_progress_bar",
        "false",
        "--model.cache_dir",
        cache_dir,
        "--data.cache_dir",
        cache_dir,
    ]
    for k, v in TINY_MODEL.items():
        args += [f"--model.{k}", str(v)]
    for k, v in TINY_DATA.items():
        args += [f"--data.{k}", json.dumps(v) if isinstance(v, list) else str(v)]
    return args


@pytest.mark.slow
def test_fit_runs_zero_shot_fine_tune_and_wise_ft_end_to_end(tmp_path, cache_dir, capsys):
    main(["fit", *_tiny_args(tmp_path, cache_dir)])
    run = tmp_path / "version_0"
    rows = {r["name"]: r for r in map(json.loads, (run / "results.jsonl").read_text().splitlines())}
    # WiSE-FT at alpha 0 / 1 is exactly the zero-shot / fine-tuned model
    for name, alpha in (("zeroshot", "0.0"), ("finetuned", "1.0")):
        assert rows[name]["acc"] == rows[f"wiseft_{alpha}"]["acc"]
        assert rows[name]["ece"] == rows[f"wiseft_{alpha}"]["ece"]
    assert rows["zeroshot"]["id"] != rows["finetuned"]["id"]
    assert set(rows["zeroshot"]["acc"]) == {"id_val", "id_test", "rotation", "flip180"}
    assert len(list((run / "wiseft").glob("alpha_*.safetensors"))) == len(DEFAULT_ALPHAS)
    chosen = json.loads((run / "wiseft.json").read_text())["chosen_alpha"]
    assert rows["wiseft_chosen"]["alpha"] == chosen
    for f in ("frontier.png", "reliability.png", "metrics.json", "checkpoints/last.ckpt"):
        assert (run / f).is_file(), f
    out = capsys.readouterr().out
    assert "| zeroshot |" in out and "WiSE-FT alpha chosen on ID validation" in out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lp_ft", "m2mix", "ssf", "ewc"])
def test_recipes_build_and_run(tmp_path, cache_dir, name):
    # The recipes with their own wiring (adapters, regularizers, objectives, LP head) build
    # their module and run fit (0 epochs) + the report; the others only set options.
    from apps.vision.module import VisionModule

    for recipe in [CONFIG_DIR / f"{name}.yaml"]:
        cli = main(
            [
                "fit",
                "--config",
                str(recipe),
                *_tiny_args(tmp_path, cache_dir),
                "--trainer.max_epochs",
                "0",
            ]
        )
        assert isinstance(cli.model, VisionModule), recipe.name
