"""``python -m core.merging CONFIG.yaml`` end to end: results, manifest, atomicity, errors."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import core.merging.cli as cli
from core.adapters import LoraConfig, inject, load_adapter, save_adapter
from core.merging import fisher_merge, greedy_soup, merge_adapter_into_base, ties, uniform_soup
from core.merging.cli import MANIFEST_NAME, load_config, main, merge_config_from_dict, run
from core.merging.io import OutputWriteError, SafetensorsWriter, sha256_file
from tests.core.adapters.models import tiny_llama

from .helpers import make_inputs


def held_out_score(state: dict[str, torch.Tensor]) -> float:
    """Score used by the greedy-soup config below (imported by name)."""
    return -float(state["head.weight"].float().abs().sum())


def failing_score(state: dict[str, torch.Tensor]) -> float:
    raise RuntimeError("evaluation crashed")


def _write_models(tmp_path: Path, dtype: torch.dtype = torch.float32) -> tuple[Path, list[Path]]:
    base, models, _ = make_inputs(dtype=dtype)
    save_file(base, str(tmp_path / "base.safetensors"))
    paths = []
    for i, m in enumerate(models):
        paths.append(tmp_path / f"ft{i}.safetensors")
        save_file(m, str(paths[-1]))
    return tmp_path / "base.safetensors", paths


def _run(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(config))
    return run(load_config(path), log=lambda msg: None)


def test_ties_config_matches_the_in_memory_merge(tmp_path: Path) -> None:
    base_path, paths = _write_models(tmp_path)
    out = _run(
        tmp_path,
        {
            "method": "ties",
            "base": str(base_path),
            "models": [
                {"path": str(paths[0]), "weight": 2.0, "density": 0.5},
                str(paths[1]),
                str(paths[2]),
            ],
            "parameters": {"density": 0.3, "scaling": 0.8},
            "output": str(tmp_path / "merged"),
        },
    )
    base, models, _ = make_inputs()
    expected = ties(base, models, density=[0.5, 0.3, 0.3], scaling=0.8, weights=[2.0, 1.0, 1.0])
    got = load_file(str(out / "model.safetensors"))
    assert list(got) == list(expected) or set(got) == set(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["method"] == "ties"
    assert manifest["parameters"] == {"scaling": 0.8}
    assert [m["params"] for m in manifest["models"]] == [
        {"density": 0.5, "weight": 2.0},
        {"weight": 1.0, "density": 0.3},
        {"weight": 1.0, "density": 0.3},
    ]
    assert manifest["base"]["files"][0]["sha256"] == sha256_file(base_path)
    assert manifest["models"][2]["files"][0]["sha256"] == sha256_file(paths[2])
    assert manifest["outputs"][0]["sha256"] == sha256_file(out / "model.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_adapters_with_an_output_dtype(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    base_state = {k: v.clone() for k, v in net.state_dict().items()}
    save_file(base_state, str(tmp_path / "base.safetensors"))
    adapters = []
    for i in range(2):
        model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        model.load_state_dict(base_state)
        inject(model, LoraConfig(r=2, target_modules=["0", "2"]))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(generator=torch.Generator().manual_seed(i))
        save_adapter(model, tmp_path / f"adapter{i}")
        adapters.append(tmp_path / f"adapter{i}")
    out = _run(
        tmp_path,
        {
            "method": "uniform_soup",
            "base": str(tmp_path / "base.safetensors"),
            "models": [str(a) for a in adapters],
            "dtype": "bfloat16",
            "output": str(tmp_path / "soup"),
        },
    )
    got = load_file(str(out / "model.safetensors"))
    folded = [merge_adapter_into_base(base_state, a) for a in adapters]
    expected = uniform_soup(folded)
    for key in expected:
        assert got[key].dtype == torch.bfloat16
        torch.testing.assert_close(got[key], expected[key].to(torch.bfloat16))


def test_default_output_dtype_is_the_base_dtype(tmp_path: Path) -> None:
    base_path, paths = _write_models(tmp_path, dtype=torch.float16)
    out = _run(
        tmp_path,
        {
            "method": "task_arithmetic",
            "base": str(base_path),
            "models": [str(p) for p in paths],
            "output": str(tmp_path / "o"),
        },
    )
    assert load_file(str(out / "model.safetensors"))["head.weight"].dtype == torch.float16


def test_existing_output_is_kept_unless_overwrite(tmp_path: Path) -> None:
    base_path, paths = _write_models(tmp_path)
    config = {
        "method": "task_arithmetic",
        "base": str(base_path),
        "models": [str(p) for p in paths],
        "output": str(tmp_path / "o"),
    }
    _run(tmp_path, config)
    with pytest.raises(FileExistsError, match="overwrite"):
        _run(tmp_path, config)
    _run(tmp_path, {**config, "overwrite": True, "parameters": {"scaling": 0.1}})
    manifest = json.loads((tmp_path / "o" / MANIFEST_NAME).read_text())
    assert manifest["parameters"] == {"scaling": 0.1}


def test_a_failure_leaves_nothing_behind(tmp_path: Path) -> None:
    _, paths = _write_models(tmp_path)
    config = {
        "method": "greedy_soup",
        "models": [str(p) for p in paths],
        "parameters": {"score_fn": f"{__name__}:failing_score"},
        "output": str(tmp_path / "soup"),
    }
    with pytest.raises(RuntimeError, match="evaluation crashed"):
        _run(tmp_path, config)
    assert not (tmp_path / "soup").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_greedy_soup_with_an_imported_score(tmp_path: Path) -> None:
    _, paths = _write_models(tmp_path)
    out = _run(
        tmp_path,
        {
            "method": "greedy_soup",
            "models": [str(p) for p in paths],
            "parameters": {"score_fn": f"{__name__}:held_out_score"},
            "output": str(tmp_path / "soup"),
        },
    )
    _, models, _ = make_inputs()
    expected = greedy_soup(models, held_out_score)
    got = load_file(str(out / "model.safetensors"))
    for key in expected:
        assert torch.equal(got[key], expected[key])
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["parameters"]["score_fn"].endswith("held_out_score")


def test_fisher_files(tmp_path: Path) -> None:
    _, paths = _write_models(tmp_path)
    _, models, fishers = make_inputs()
    fisher_paths = []
    for i, f in enumerate(fishers):
        fisher_paths.append(tmp_path / f"fisher{i}.safetensors")
        save_file(f, str(fisher_paths[-1]))
    out = _run(
        tmp_path,
        {
            "method": "fisher_merge",
            "models": [
                {"path": str(p), "fisher": str(f)} for p, f in zip(paths, fisher_paths, strict=True)
            ],
            "output": str(tmp_path / "f"),
        },
    )
    expected = fisher_merge(models, fishers)
    got = load_file(str(out / "model.safetensors"))
    for key in expected:
        assert torch.equal(got[key], expected[key])


def test_hf_directory_keeps_its_config(tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    dirs = []
    for seed in range(3):
        torch.manual_seed(seed)
        tiny_llama(16).save_pretrained(tmp_path / f"m{seed}")
        dirs.append(tmp_path / f"m{seed}")
    out = _run(
        tmp_path,
        {
            "method": "dare",
            "base": str(dirs[0]),
            "models": [str(d) for d in dirs[1:]],
            "parameters": {"drop_rate": 0.5},
            "seed": 3,
            "output": str(tmp_path / "merged"),
        },
    )
    assert (out / "config.json").is_file()
    merged = LlamaForCausalLM.from_pretrained(out)  # loads as a normal HF model directory
    assert merged.model.layers[0].self_attn.q_proj.weight.shape == (16, 16)


def test_adapter_level_merge(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    base_state = {k: v.clone() for k, v in net.state_dict().items()}
    paths = []
    for i in range(2):
        net.load_state_dict(base_state)
        model = torch.nn.Sequential(*net)
        inject(model, LoraConfig(r=2, target_modules=["0"]), name=f"a{i}")
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(generator=torch.Generator().manual_seed(i))
        save_adapter(model, tmp_path / f"a{i}", name=f"a{i}")
        paths.append(tmp_path / f"a{i}")
    out = _run(
        tmp_path,
        {
            "combination": "svd",
            "rank": 3,
            "method": "ties",
            "parameters": {"density": 0.5},
            "models": [{"path": str(p), "weight": 1.0} for p in paths],
            "output": str(tmp_path / "merged"),
        },
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        MANIFEST_NAME,
    ]
    fresh = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    fresh.load_state_dict(base_state)
    load_adapter(fresh, out)  # a valid PEFT-layout adapter
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["kind"] == "adapter" and manifest["combination"] == "svd"


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"method": "ties", "models": ["x"], "output": "o", "colour": 1}, "unknown key"),
        ({"method": "ties", "output": "o"}, "'models' is required"),
        ({"method": "tiez", "models": ["x"], "output": "o"}, "Did you mean 'ties'"),
        ({"models": ["x"], "output": "o"}, "set 'method'"),
        ({"method": "ties", "models": ["x"], "output": "o", "dtype": "int8"}, "dtype"),
        ({"method": "ties", "models": [{"weight": 1}], "output": "o"}, "needs a 'path'"),
        ({"combination": "sum", "models": ["x"], "output": "o"}, "combination must be"),
    ],
)
def test_config_errors_are_explained(config: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        merge_config_from_dict(config)


def test_run_errors_name_the_input(tmp_path: Path) -> None:
    base_path, paths = _write_models(tmp_path)
    with pytest.raises(ValueError, match="needs base"):
        _run(tmp_path, {"method": "ties", "models": [str(p) for p in paths], "output": "o"})
    with pytest.raises(ValueError, match="not an adapter directory"):
        _run(tmp_path, {"combination": "cat", "models": [str(paths[0])], "output": "o"})
    bad = tmp_path / "bad.safetensors"
    save_file({"head.weight": torch.zeros(1)}, str(bad))
    with pytest.raises(ValueError, match=r"bad\.safetensors"):
        _run(
            tmp_path,
            {
                "method": "ties",
                "base": str(base_path),
                "models": [str(bad)],
                "output": str(tmp_path / "o"),
            },
        )
    assert not (tmp_path / "o").exists()


def test_main_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list-methods"]) == 0
    assert "ties" in capsys.readouterr().out
    (tmp_path / "c.yaml").write_text("method: ties\nmodels: [missing.safetensors]\noutput: o\n")
    assert main([str(tmp_path / "c.yaml")]) == 2
    assert "error:" in capsys.readouterr().err


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    base_path, paths = _write_models(tmp_path)
    (tmp_path / "c.yaml").write_text(
        yaml.safe_dump(
            {
                "method": "task_arithmetic",
                "base": str(base_path),
                "models": [str(p) for p in paths],
                "output": str(tmp_path / "o"),
            }
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "core.merging", str(tmp_path / "c.yaml"), "--seed", "5"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "o" / MANIFEST_NAME).read_text())["seed"] == 5


# ------------------------------------------------------------- the inputs are never touched
def _snapshot(root: Path) -> dict[str, bytes | str]:
    """Every file's bytes and every symlink's target under ``root``."""
    found: dict[str, bytes | str] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(folder) / name
            key = str(p.relative_to(root))
            if p.is_symlink():
                found[key] = f"-> {os.readlink(p)}"
            elif p.is_file():
                found[key] = p.read_bytes()
    return found


def _overlap_layout(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """runs/models/{base,ft0,ft2}.safetensors and runs/models/ft_dir/ (an HF-style dir)."""
    models = tmp_path / "runs" / "models"
    models.mkdir(parents=True)
    base_path, paths = _write_models(models)
    (models / "ft_dir").mkdir()
    paths[1].rename(models / "ft_dir" / "model.safetensors")
    inputs = [str(paths[0]), str(models / "ft_dir"), str(paths[2])]
    config = {"method": "task_arithmetic", "base": str(base_path), "models": inputs}
    return models, config


OVERLAPS = {
    # case: (output relative to tmp_path, symlink to create there or None, relation)
    "output is the inputs' folder": ("runs/models", None, "contains"),
    "output is an input file": ("runs/models/ft0.safetensors", None, "is"),
    "output inside an input directory": ("runs/models/ft_dir/merged", None, "lies inside"),
    "output contains the inputs": ("runs", None, "contains"),
    "output is a symlink to an input dir": ("link", "runs/models/ft_dir", "is"),
    "output is a symlink to an input file": ("link", "runs/models/base.safetensors", "is"),
    "output inside a symlinked input": ("link/merged", "runs/models/ft_dir", "lies inside"),
    "output is the config file": ("merge.yaml", None, "is"),
}


@pytest.mark.parametrize("case", OVERLAPS)
def test_an_output_overlapping_an_input_is_refused_even_with_overwrite(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, config = _overlap_layout(tmp_path)
    output, link_target, relation = OVERLAPS[case]
    if link_target is not None:
        (tmp_path / "link").symlink_to(tmp_path / link_target)
    config_path = tmp_path / "merge.yaml"
    config_path.write_text(yaml.safe_dump({**config, "output": str(tmp_path / output)}))
    before = _snapshot(tmp_path)
    assert main([str(config_path), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # refused before anything is logged or read
    assert (
        err[0].startswith(f"error: output '{tmp_path / output}' ")
        and f" {relation} input " in err[0]
    )
    assert "even with overwrite" in err[0]
    assert _snapshot(tmp_path) == before  # byte-identical, nothing added or removed


def test_run_refuses_an_overlap_before_reading_anything(tmp_path: Path) -> None:
    models, config = _overlap_layout(tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(
        ValueError,
        match=r"^output '.*models/ft_dir' is input '.*models/ft_dir'; .* even with overwrite",
    ):
        run(merge_config_from_dict({**config, "output": str(models / "ft_dir"), "overwrite": True}))
    assert _snapshot(tmp_path) == before


def _write_two_adapters(tmp_path: Path) -> None:
    """LoRA adapters ``a0`` and ``a1`` (rank 2 on layer ``0`` of one small MLP) in ``tmp_path``."""
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    for i in range(2):
        model = torch.nn.Sequential(*net)
        inject(model, LoraConfig(r=2, target_modules=["0"]), name=f"a{i}")
        save_adapter(model, tmp_path / f"a{i}", name=f"a{i}")


def test_adapter_merge_cannot_overwrite_an_input_adapter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_two_adapters(tmp_path)
    config_path = tmp_path / "merge.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "combination": "cat",
                "models": [str(tmp_path / "a0"), str(tmp_path / "a1")],
                "output": str(tmp_path / "a1"),
                "overwrite": True,
            }
        )
    )
    before = _snapshot(tmp_path)
    assert main([str(config_path)]) == 2
    assert "is input" in capsys.readouterr().err
    assert _snapshot(tmp_path) == before


def test_an_output_next_to_the_inputs_is_fine(tmp_path: Path) -> None:
    models, config = _overlap_layout(tmp_path)
    out = _run(tmp_path, {**config, "output": str(models / "ft_dir_merged")})
    assert (out / "model.safetensors").is_file()


# -------------------------------------------------------------------------------- full disk
def _full_disk_after(calls: int) -> Callable[..., Any]:
    """A SafetensorsWriter.sink that writes ``calls`` chunks, then fails with ENOSPC."""
    real = SafetensorsWriter.sink
    done = [0]

    def sink(self: SafetensorsWriter, key: str, shape: Any, dtype: Any) -> Any:
        write = real(self, key, shape, dtype)

        def failing(sl: slice, values: torch.Tensor) -> None:
            if done[0] >= calls:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            done[0] += 1
            write(sl, values)

        return failing

    return sink


def test_a_full_disk_is_one_line_naming_the_output_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    base_path, paths = _write_models(tmp_path)
    config_path = tmp_path / "c.yaml"
    output = tmp_path / "out" / "merged"
    config_path.write_text(
        yaml.safe_dump(
            {
                "method": "task_arithmetic",
                "base": str(base_path),
                "models": [str(p) for p in paths],
                "output": str(output),
            }
        )
    )
    assert main([str(config_path)]) == 0  # a first, complete output
    capsys.readouterr()
    previous = _snapshot(output)
    monkeypatch.setattr(SafetensorsWriter, "sink", _full_disk_after(2))
    for argv in ([str(config_path), "--overwrite"], [str(config_path), "--output", "o2"]):
        monkeypatch.chdir(tmp_path)
        assert main(argv) == 1
        err = [
            line for line in capsys.readouterr().err.splitlines() if "[core.merging]" not in line
        ]
        assert len(err) == 1, err
        shown = str(output) if "--overwrite" in argv else "o2"
        assert err[0].startswith(f"error: no space left on the disk holding output '{shown}'")
        assert re.search(r"need about \d+ bytes\); free space there or choose an output", err[0])
        assert err[0].endswith("Nothing was written.")
    assert _snapshot(output) == previous  # the earlier output is untouched
    assert not (tmp_path / "o2").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["merged"]  # no temp dirs
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_full_disk_during_an_adapter_merge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_two_adapters(tmp_path)

    def half_then_full(adapter: Any, folder: Path) -> None:
        (folder / "adapter_config.json").write_text("{}")
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(cli, "write_lora_adapter_files", half_then_full)
    config = {"combination": "cat", "models": [str(tmp_path / "a0"), str(tmp_path / "a1")]}
    config_path = tmp_path / "c.yaml"
    config_path.write_text(yaml.safe_dump({**config, "output": str(tmp_path / "m")}))
    assert main([str(config_path)]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "[core.merging]" not in line]
    assert len(err) == 1 and f"output '{tmp_path / 'm'}'" in err[0] and "free space" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a0", "a1", "c.yaml"]


def test_other_write_errors_are_not_disguised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_path, paths = _write_models(tmp_path)
    real = SafetensorsWriter.sink

    def broken(self: SafetensorsWriter, key: str, shape: Any, dtype: Any) -> Any:
        real(self, key, shape, dtype)
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(SafetensorsWriter, "sink", broken)
    config = {"method": "uniform_soup", "models": [str(p) for p in paths], "output": "o"}
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError, match="I/O error") as info:
        _run(tmp_path, config)
    assert not isinstance(info.value, OutputWriteError)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [base_path.name, *(p.name for p in paths), "merge.yaml"]
    )
