"""Adapter save/load under concurrency and with broken weights (core.adapters.io).

A save and a load of the same adapter directory may overlap (a trainer re-saving while a
server reloads): every load must return one whole version, config and weights from the same
save, and never fail. Weights with NaN/inf are refused, naming the tensor and the file.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import core.adapters.io as adapter_io
from core.adapters import LoraConfig, adapter_names, inject, load_adapter, save_adapter
from core.adapters.io import (
    CONFIG_NAME,
    PEFT_PREFIX,
    WEIGHTS_NAME,
    read_adapter,
    read_adapter_files,
    write_adapter_dir,
)

from .models import MODEL_CASES

WIDTH = 512  # tensors large enough that a save takes a while, so reads overlap saves


def _version(alpha: float, value: float) -> tuple[dict[str, torch.Tensor], dict]:
    """An adapter version whose weights are all ``value`` and whose alpha is ``alpha``."""
    tensors = {
        f"{PEFT_PREFIX}{layer}.lora_{part}.weight": torch.full(shape, value)
        for layer in ("0", "2")
        for part, shape in (("A", (4, WIDTH)), ("B", (WIDTH, 4)))
    }
    return tensors, LoraConfig(r=4, alpha=alpha, target_modules=["0", "2"]).to_json_dict()


VERSIONS = {4.0: _version(4.0, 1.0), 8.0: _version(8.0, 2.0)}  # alpha -> (tensors, config)


def _two_rename_save(path: Path, tensors: dict[str, torch.Tensor], config: dict) -> None:
    """A directory swap without an atomic exchange (other systems, the pre-exchange
    ``atomic_directory``): old out, new in, old deleted; the adapter is briefly absent."""
    new, old = path.with_name(f".{path.name}.new"), path.with_name(f".{path.name}.old")
    write_adapter_dir(new, tensors, config)
    os.replace(path, old)
    os.replace(new, path)
    shutil.rmtree(old)


Save = Callable[[Path, dict[str, torch.Tensor], dict], object]


def _hammer(path: Path, seconds: float, save: Save) -> tuple[int, set[float], list[str]]:
    """Re-save two versions in a loop while reading; (reads, versions seen, failures)."""
    write_adapter_dir(path, *VERSIONS[4.0])
    stop = threading.Event()
    writer_errors: list[str] = []

    def writer() -> None:
        try:
            while not stop.is_set():
                for version in VERSIONS.values():
                    save(path, *version)
        except Exception as err:  # reported by the test below
            writer_errors.append(f"writer: {type(err).__name__}: {err}")

    failures: list[str] = []
    seen: set[float] = set()
    reads = 0
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so reads land inside saves
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            reads += 1
            try:
                config, tensors = read_adapter(path)
            except Exception as err:
                failures.append(f"{type(err).__name__}: {err}")
                continue
            expected = VERSIONS[4.0][1] if config.alpha == 4.0 else VERSIONS[8.0][1]
            value = 1.0 if config.alpha == 4.0 else 2.0
            seen.add(config.alpha)
            if config.to_json_dict() != expected or sorted(tensors) != sorted(VERSIONS[4.0][0]):
                failures.append(f"unexpected config or keys: alpha={config.alpha}")
            elif not all(bool((t == value).all()) for t in tensors.values()):
                failures.append(f"config of alpha={config.alpha} with another version's weights")
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(old_interval)
    return reads, seen, failures + writer_errors


def test_reads_during_saves_see_one_whole_version(tmp_path: Path) -> None:
    reads, seen, failures = _hammer(tmp_path / "a", 1.5, write_adapter_dir)
    assert failures == []
    assert seen == {4.0, 8.0} and reads > 50  # the reads really overlapped saves of both
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no staged copies left


def test_without_an_atomic_swap_reads_wait_out_the_gap(tmp_path: Path) -> None:
    """A save that renames twice (no RENAME_EXCHANGE) leaves a gap; reads wait it out."""
    reads, seen, failures = _hammer(tmp_path / "a", 1.0, _two_rename_save)
    assert failures == []
    assert seen == {4.0, 8.0} and reads > 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_resave_swaps_the_directory_in_one_step(tmp_path: Path) -> None:
    write_adapter_dir(tmp_path / "a", *VERSIONS[4.0])
    (tmp_path / "a" / "stale.txt").write_text("from the old save")
    write_adapter_dir(tmp_path / "a", *VERSIONS[8.0])
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    assert read_adapter(tmp_path / "a")[0].alpha == 8.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_a_file_rewritten_in_place_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A weights file caught half-written (PEFT writes in place) is re-read, not reported."""
    write_adapter_dir(tmp_path / "a", *VERSIONS[4.0])
    real = adapter_io._read_pair
    calls = []

    def torn_then_whole(path: Path) -> tuple[bytes, bytes] | None:
        config, weights = real(path)
        calls.append(path)
        return (config, weights[: len(weights) // 2]) if len(calls) == 1 else (config, weights)

    monkeypatch.setattr(adapter_io, "_read_pair", torn_then_whole)
    config, tensors = read_adapter(tmp_path / "a")
    assert len(calls) == 2 and config.alpha == 4.0
    assert all(bool((t == 1.0).all()) for t in tensors.values())


def test_a_directory_that_keeps_changing_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_adapter_dir(tmp_path / "a", *VERSIONS[4.0])
    monkeypatch.setattr(adapter_io, "_read_pair", lambda path: None)  # swapped on every try
    monkeypatch.setattr(adapter_io.time, "sleep", lambda s: None)
    with pytest.raises(RuntimeError, match=r"'.*a' kept changing while it was read"):
        read_adapter_files(tmp_path / "a")


def test_missing_and_wrong_paths_are_named(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match=r"adapter directory '.*nope' does not exist"):
        read_adapter(tmp_path / "nope")
    assert time.monotonic() - start < 0.2  # no save in progress: no waiting
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileNotFoundError, match="is a file"):
        read_adapter(tmp_path / "file")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / CONFIG_NAME).write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"adapter_model\.safetensors' is missing"):
        read_adapter(tmp_path / "half")
    (tmp_path / "half" / WEIGHTS_NAME).write_bytes(b"")
    (tmp_path / "half" / CONFIG_NAME).write_text("[1, 2]")
    with pytest.raises(ValueError, match="holds a JSON list, not an object"):
        read_adapter(tmp_path / "half")


def _saved_mlp(tmp_path: Path, poison: float | None) -> Path:
    model = MODEL_CASES["mlp"].build()
    inject(model, LoraConfig(r=2, target_modules=["0", "2"]))
    with torch.no_grad():
        model[2].adapters["default"].lora_B.weight.normal_()
        if poison is not None:
            model[2].adapters["default"].lora_B.weight[1, 0] = poison
            model[2].adapters["default"].lora_B.weight[2, 1] = poison
    save_adapter(model, tmp_path / "a")
    return tmp_path / "a"


@pytest.mark.parametrize("poison", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path: Path, poison: float) -> None:
    path = _saved_mlp(tmp_path, poison)
    fresh = MODEL_CASES["mlp"].build()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(
        ValueError,
        match=r"'base_model\.model\.2\.lora_B\.weight' in '.*adapter_model\.safetensors' has 2 "
        r"NaN/inf value\(s\).*allow_non_finite=True",
    ):
        load_adapter(fresh, path)
    assert adapter_names(fresh) == []  # nothing half-loaded
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_non_finite_weights_load_when_allowed(tmp_path: Path) -> None:
    path = _saved_mlp(tmp_path, float("nan"))
    fresh = MODEL_CASES["mlp"].build()
    load_adapter(fresh, path, allow_non_finite=True)
    assert int(torch.isnan(fresh[2].adapters["default"].lora_B.weight).sum()) == 2
    _, tensors = read_adapter(path, allow_non_finite=True)
    assert int(torch.isnan(tensors["base_model.model.2.lora_B.weight"]).sum()) == 2


def test_finite_adapter_in_low_precision_loads(tmp_path: Path) -> None:
    tensors = {k: v.to(torch.bfloat16) for k, v in VERSIONS[4.0][0].items()}
    tensors[f"{PEFT_PREFIX}extra.scale"] = torch.ones(3).to(torch.float8_e4m3fn)
    tensors[f"{PEFT_PREFIX}extra.steps"] = torch.tensor([1, 2])
    config = {**VERSIONS[4.0][1], "modules_to_save": ["extra"]}
    write_adapter_dir(tmp_path / "a", tensors, config)
    assert read_adapter(tmp_path / "a")[1][f"{PEFT_PREFIX}extra.steps"].tolist() == [1, 2]
    tensors[f"{PEFT_PREFIX}extra.scale"][0] = float("nan")
    write_adapter_dir(tmp_path / "a", tensors, config)
    with pytest.raises(ValueError, match=r"'base_model\.model\.extra\.scale'"):
        read_adapter(tmp_path / "a")


def test_save_then_load_is_unchanged(tmp_path: Path) -> None:
    path = _saved_mlp(tmp_path, None)
    saved = json.loads((path / CONFIG_NAME).read_text())
    fresh: nn.Module = MODEL_CASES["mlp"].build()
    load_adapter(fresh, path)
    save_adapter(fresh, tmp_path / "b")
    assert json.loads((tmp_path / "b" / CONFIG_NAME).read_text()) == saved
    a, b = read_adapter(path)[1], read_adapter(tmp_path / "b")[1]
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
