import json

import pytest

from apps.vision.module import VisionModule
from apps.vision.train import CONFIG_DIR, main

from .conftest import TINY_DATA, TINY_MODEL, TINY_YAML

RECIPES = sorted(p for p in CONFIG_DIR.glob("*.yaml") if p.name != "tiny.yaml")


def _tiny(root, cache_dir, *more):
    return ["--config", str(TINY_YAML), *more, "--trainer.default_root_dir", str(root),
            "--data.cache_dir", cache_dir]  # fmt: skip


def _rows(run):
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]


def test_ten_recipes_and_a_tiny_one():
    assert [p.stem for p in RECIPES] == [
        "default", "ewc", "flyp", "l2sp", "linear_probe", "lora", "lp_ft", "m2mix", "ssf",
        "zeroshot",
    ]  # fmt: skip


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_instantiates_under_tiny(recipe, tmp_path, cache_dir):
    cli = main(["--config", str(recipe), *_tiny(tmp_path, cache_dir)], run=False)
    assert isinstance(cli.model, VisionModule)
    assert cli.model.method == ("finetuned" if recipe.stem == "default" else recipe.stem)
    assert cli.model.hparams["embed_dim"] == TINY_MODEL["embed_dim"]  # tiny is laid over
    assert cli.datamodule.sizes[0] == TINY_DATA["n_train"]
    assert cli.model.hparams["cache_dir"] == cache_dir  # linked from data.cache_dir
    assert not list(tmp_path.iterdir())  # run=False writes nothing


def test_tiny_run_fits_tests_reports_and_a_test_run_reports_again(tmp_path, cache_dir, capsys):
    main(_tiny(tmp_path, cache_dir))
    run = tmp_path / "version_0"
    for name in ("config.yaml", "checkpoints/last.ckpt", "report.md", "frontier.png",
                 "reliability.png", "results.jsonl", "wiseft.json"):  # fmt: skip
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["fit"]["global_step"] == 1 and "test/acc" in metrics["test"]
    rows = {r["name"]: r for r in _rows(run)}
    alphas = TINY_MODEL["wiseft_alphas"]
    assert list(rows) == [
        "zeroshot", "finetuned", *(f"wiseft_{a:.1f}" for a in alphas), "wiseft_chosen",
    ]  # fmt: skip
    assert rows["finetuned"]["id"] == pytest.approx(metrics["test"]["test/acc"], abs=1e-6)
    assert len(list((run / "wiseft").glob("alpha_*.safetensors"))) == len(alphas)
    chosen = json.loads((run / "wiseft.json").read_text())["chosen_alpha"]
    assert rows["wiseft_chosen"]["alpha"] == chosen
    report = (run / "report.md").read_text()
    assert report.startswith("# Vision: finetuned under distribution shift")
    assert "| finetuned |" in report and "![reliability](reliability.png)" in report
    out = capsys.readouterr().out
    assert "| zeroshot |" in out and "WiSE-FT alpha chosen on ID validation" in out
    # `test` of the checkpoint alone scores the shifts too, in a run directory of its own
    ckpt = run / "checkpoints" / "last.ckpt"
    main(["test", *_tiny(tmp_path, cache_dir), "--ckpt_path", str(ckpt)])
    again = {r["name"]: r for r in _rows(tmp_path / "version_1")}
    for name in ("zeroshot", "finetuned", "wiseft_chosen"):
        assert again[name]["acc"] == rows[name]["acc"], name
    assert (tmp_path / "version_1" / "report.md").is_file()


@pytest.mark.parametrize("name", ["lp_ft", "m2mix", "ssf", "ewc", "zeroshot"])
def test_recipes_with_their_own_wiring_fit_and_test(tmp_path, cache_dir, name):
    # LP head, mixup objective, adapter, regularizer, no training: each runs fit + test.
    main(["--config", str(CONFIG_DIR / f"{name}.yaml"), *_tiny(tmp_path, cache_dir)])
    run = tmp_path / "version_0"
    rows = {r["name"]: r for r in _rows(run)}
    assert {"zeroshot", name} <= set(rows) and (run / "report.md").is_file()
    steps = json.loads((run / "metrics.json").read_text())["fit"]["global_step"]
    assert steps == (0 if name == "zeroshot" else 1)
    if name == "zeroshot":  # nothing trained: the method's row equals the zero-shot row
        zero_shot, method = [r for r in _rows(run) if r["name"] == "zeroshot"]
        assert zero_shot["acc"] == method["acc"] and zero_shot["ece"] == method["ece"]
    if name == "ssf":
        assert (run / "adapter" / "adapter_model.safetensors").is_file()


def test_shared_options_are_set_on_the_data_side(tmp_path, cache_dir):
    cli = main([*_tiny(tmp_path, cache_dir), "--data.split", "5"], run=False)
    assert cli.datamodule.split == 5 and cli.model.hparams["split"] == 5
    with pytest.raises(ValueError, match=r"data\.split"):
        main([*_tiny(tmp_path, cache_dir), "--model.split", "5"], run=False)


def test_help_lists_own_and_base_options(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = capsys.readouterr().out
    for option in ("--model.pretrained", "--model.method", "--model.monitor", "LoraConfig",
                   "--data.source", "--data.split_seed"):  # fmt: skip
        assert option in out, option
