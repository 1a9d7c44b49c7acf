"""The app contract (docs/new_domain_app.md, "The app contract"), checked on every app.

An app is a folder holding a ``train.py``: every one under ``apps/`` is found by
:func:`discover_apps` and gets these checks by existing, as LeRobot's policy tests run over
every policy. The core's example app (``core.examples``) and a fixture app
(``tests/apps/fixture_app``, found the same way under ``tests/apps/``) are checked too.

Per app:

- **layout**: ``__init__.py``, ``train.py`` with ``main(args=None, run=True)``,
  ``configs/default.yaml``, ``configs/tiny.yaml``, a data and a module file;
- **tiny run**: ``python -m <app>.train --config <app>/configs/tiny.yaml
  --trainer.default_root_dir D`` (no subcommand: fit, then test), run once per app as a
  subprocess from an empty cache, leaves one run directory ``D/version_0`` with
  ``config.yaml``, ``checkpoints/last.ckpt``, ``metrics.json`` (a one-step ``fit`` and a
  ``test``), ``report.md`` and, where the run's config sets an adapter, ``adapter/`` in
  PEFT layout;
- **every recipe** (``configs/*.yaml``): parses over the default (``--print_config``); laid
  over the default and then ``tiny.yaml`` (its ``model`` section only where the recipe keeps
  the default's module class or a subclass of it), instantiates without writing anything
  (``main([...], run=False)``), and one training batch through the module's
  ``training_step`` gives a finite loss;
- **help**: ``fit --help`` (with ``subclass_mode``: ``fit --model.help <class>`` for each
  module class the recipes name) lists every registered adapter method and the base options.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import yaml
from safetensors.torch import load_file

from core.adapters import ADAPTER_REGISTRY
from core.cache import CACHE_ENV
from core.training import FineTuneCLI, FineTuneModule
from core.training.cli import TINY_CONFIG, tiny_config
from tests.core.training.toys import quiet_trainer
from tests.threads import one_thread  # noqa: F401  (autouse fixture)

REPO = Path(__file__).resolve().parents[2]
#: Where the fixture app lives: a folder of apps, as ``apps/`` is.
FIXTURE_ROOT = Path(__file__).resolve().parent
#: Upper bound of one tiny run (the contract asks for about a minute on two CPU cores).
TINY_RUN_TIMEOUT_S = 300
#: Files every app has, relative to its folder (data and module are checked apart, see
#: :func:`missing_layout`).
REQUIRED_FILES = ("__init__.py", "train.py", "configs/default.yaml", f"configs/{TINY_CONFIG}")


def discover_apps(root: Path, import_root: Path = REPO) -> list[str]:
    """Dotted package names of the apps in ``root``: each sub-folder that holds a ``train.py``.

    Args:
        root: A folder of apps, such as ``apps/``.
        import_root: The folder on ``sys.path`` that the dotted names start from.
    """
    prefix = ".".join(root.resolve().relative_to(import_root.resolve()).parts)
    return sorted(
        f"{prefix}.{folder.name}" if prefix else folder.name
        for folder in root.iterdir()
        if folder.is_dir() and (folder / "train.py").is_file()
    )


APPS = [*discover_apps(REPO / "apps"), "core.examples", *discover_apps(FIXTURE_ROOT)]


@dataclass(frozen=True)
class App:
    """One app under test, by its dotted package name (``apps.vision``)."""

    package: str

    @property
    def folder(self) -> Path:
        """The app's folder in this checkout."""
        return REPO.joinpath(*self.package.split("."))

    @property
    def default_config(self) -> Path:
        """``configs/default.yaml``."""
        return self.folder / "configs" / "default.yaml"

    def recipes(self) -> list[Path]:
        """Every ``configs/*.yaml``, sorted."""
        return sorted((self.folder / "configs").glob("*.yaml"))

    def main(self) -> Callable[..., FineTuneCLI]:
        """The app's ``train.main``."""
        return importlib.import_module(f"{self.package}.train").main


def recipe_cases() -> list[Any]:
    """``pytest.param(app, recipe)`` for every recipe of every app."""
    return [
        pytest.param(App(package), recipe, id=f"{package}:{recipe.stem}")
        for package in APPS
        for recipe in App(package).recipes()
    ]


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML file's top-level mapping (empty for an empty file)."""
    return yaml.safe_load(path.read_text()) or {}


def model_init_args(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``model`` options of a config, also where it names the class (``subclass_mode``)."""
    model = config.get("model") or {}
    return (model.get("init_args") or {}) if "class_path" in model else model


def adapter_class_path(config: Mapping[str, Any]) -> str | None:
    """The class path of the adapter a config sets (``None`` where it sets none)."""
    adapter = model_init_args(config).get("adapter")
    return adapter.get("class_path") if isinstance(adapter, Mapping) else adapter


def missing_layout(folder: Path) -> list[str]:
    """The contract's layout files that ``folder`` lacks (empty when it keeps the layout).

    The data is ``data.py`` or a ``data/`` package; the module is ``module.py``, a
    ``module/`` package or, where there are several tasks, one ``<task>_module.py`` each.
    """
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if not ((folder / "data.py").is_file() or (folder / "data" / "__init__.py").is_file()):
        missing.append("data.py")
    modules = [folder / "module.py", folder / "module" / "__init__.py"]
    if not (any(p.is_file() for p in modules) or any(folder.glob("*_module.py"))):
        missing.append("module.py")
    return missing


# ----------------------------------------------------------------------------- discovery
def test_discovery_finds_the_fixture_app_in_its_root() -> None:
    assert discover_apps(FIXTURE_ROOT) == ["tests.apps.fixture_app"]
    assert "tests.apps.fixture_app" in APPS and "core.examples" in APPS


def test_a_new_folder_with_a_train_py_is_an_app_and_is_checked(tmp_path: Path) -> None:
    (tmp_path / "apps" / "new_app").mkdir(parents=True)
    (tmp_path / "apps" / "new_app" / "train.py").write_text("")
    (tmp_path / "apps" / "not_an_app").mkdir()  # no train.py
    assert discover_apps(tmp_path / "apps", import_root=tmp_path) == ["apps.new_app"]
    assert missing_layout(tmp_path / "apps" / "new_app") == [
        "__init__.py",
        "configs/default.yaml",
        "configs/tiny.yaml",
        "data.py",
        "module.py",
    ]


# ----------------------------------------------------------------------------- layout
@pytest.mark.parametrize("package", APPS)
def test_layout(package: str) -> None:
    app = App(package)
    missing = missing_layout(app.folder)
    assert not missing, f"{app.folder} lacks {missing} (docs/new_domain_app.md, Layout)"
    signature = inspect.signature(app.main())
    params = signature.parameters
    assert "args" in params and params["args"].default is None, signature
    assert "run" in params and params["run"].default is True, (
        f"{package}.train.main{signature} must take run: bool = True (run=False builds the "
        "model, data and trainer without running)"
    )


# ----------------------------------------------------------------------------- tiny run
@dataclass(frozen=True)
class TinyRun:
    """What one tiny run from the command line left behind."""

    app: App
    root: Path
    returncode: int
    output: str
    seconds: float

    def run_dir(self) -> Path:
        """``root/version_0``, after checking that the run succeeded."""
        if self.returncode != 0:
            pytest.fail(
                f"the tiny run of {self.app.package} exited {self.returncode} after "
                f"{self.seconds:.0f} s:\n{self.output[-4000:]}"
            )
        return self.root / "version_0"


@pytest.fixture(scope="module", params=APPS)
def tiny_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """Run ``python -m <app>.train --config <tiny.yaml> --trainer.default_root_dir D`` once."""
    app = App(request.param)
    try:
        tiny = tiny_config(app.package)
    except FileNotFoundError as err:
        pytest.fail(str(err))
    work = tmp_path_factory.mktemp(app.package.replace(".", "_"))
    root = work / "runs"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        CACHE_ENV: str(work / "cache"),  # the contract: it runs from an empty cache
    }
    tiny = tiny.relative_to(REPO)  # as a user types it, from the repository root
    command = [sys.executable, "-m", f"{app.package}.train", "--config", str(tiny)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [*command, "--trainer.default_root_dir", str(root)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=TINY_RUN_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the tiny run of {app.package} took over {TINY_RUN_TIMEOUT_S} s")
    seconds = time.perf_counter() - start
    return TinyRun(app, root, proc.returncode, proc.stdout + proc.stderr, seconds)


def test_tiny_run_leaves_one_run_directory(tiny_run: TinyRun) -> None:
    run_dir = tiny_run.run_dir()
    assert sorted(p.name for p in tiny_run.root.iterdir()) == ["version_0"]
    for name in ("config.yaml", "checkpoints/last.ckpt", "metrics.json", "report.md"):
        assert (run_dir / name).is_file(), f"{tiny_run.app.package}: no {name} in {run_dir}"
    config = read_yaml(run_dir / "config.yaml")
    assert {"model", "data", "trainer"} <= set(config)
    assert config["trainer"]["default_root_dir"] == str(tiny_run.root)


def test_tiny_run_fits_one_step_and_tests(tiny_run: TinyRun) -> None:
    metrics = json.loads((tiny_run.run_dir() / "metrics.json").read_text())
    assert {"fit", "test"} <= set(metrics), sorted(metrics)
    assert metrics["fit"]["global_step"] == 1, "tiny.yaml makes fit one optimizer step"
    assert any(key.startswith("test/") for key in metrics["test"]), metrics["test"]


def test_tiny_run_writes_the_report(tiny_run: TinyRun) -> None:
    report = tiny_run.run_dir() / "report.md"
    assert report.read_text().startswith("# "), "report.md opens with its title"
    assert f"report: {report.resolve()}" in tiny_run.output, "the run prints the report's path"


def test_tiny_run_exports_the_configured_adapter(tiny_run: TinyRun) -> None:
    run_dir = tiny_run.run_dir()
    class_path = adapter_class_path(read_yaml(run_dir / "config.yaml"))
    default = adapter_class_path(read_yaml(tiny_run.app.default_config))
    if default is not None:  # tiny.yaml keeps the default's adapter, so the run exports one
        assert class_path is not None and class_path.split(".")[-1] == default.split(".")[-1]
    if class_path is None:
        return
    module, _, name = class_path.rpartition(".")
    config_cls = getattr(importlib.import_module(module), name)
    for folder in exported_adapter_dirs(run_dir / "adapter"):
        saved = json.loads((folder / "adapter_config.json").read_text())
        assert saved["peft_type"] == config_cls.peft_type
        tensors = load_file(folder / "adapter_model.safetensors")
        assert tensors and all(t.isfinite().all() for t in tensors.values())


def exported_adapter_dirs(adapter_dir: Path) -> list[Path]:
    """The PEFT folders under ``adapter/``: itself, or one per adapter of a bank
    (``adapter/<name>/``, how an app serving one adapter per language or task exports)."""
    if (adapter_dir / "adapter_config.json").is_file():
        return [adapter_dir]
    folders = sorted(p.parent for p in adapter_dir.glob("*/adapter_config.json"))
    assert folders, f"{adapter_dir} holds no adapter_config.json, at the top or per adapter"
    return folders


# ----------------------------------------------------------------------------- recipes
@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the in-process checks of this module (never the user's real cache)."""
    return tmp_path_factory.mktemp("contract_cache")


@pytest.fixture()
def isolated_cache(shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the apps' cache at :func:`shared_cache` for one test."""
    monkeypatch.setenv(CACHE_ENV, str(shared_cache))
    return shared_cache


class LossCatcher(pl.Callback):
    """Keeps the loss of every training batch (``training_step``'s return)."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, *args: Any
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        self.losses.append(float(loss.detach()))


def one_training_step(cli: FineTuneCLI, root: Path) -> list[float]:
    """Fit the built model on one training batch of the built data; the batch losses.

    A bare trainer (no logger, checkpoint or run callbacks; validation off) runs the
    module's hooks (``setup``, ``configure_optimizers``) and ``training_step`` once.
    """
    catcher = LossCatcher()
    trainer = quiet_trainer(
        max_steps=1,
        limit_train_batches=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=root,
        callbacks=[catcher],
    )
    trainer.fit(cli.model, datamodule=cli.datamodule)
    return catcher.losses


@pytest.mark.usefixtures("isolated_cache")
@pytest.mark.parametrize(("app", "recipe"), recipe_cases())
def test_recipe_parses(
    app: App,
    recipe: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit:
        app.main()(["--config", str(recipe), "--print_config"])
    printed = capsys.readouterr().out
    assert exit.value.code in (0, None), printed[-3000:]
    config = yaml.safe_load(printed)
    assert {"model", "data", "trainer"} <= set(config), printed[:3000]


def model_class(config: Mapping[str, Any]) -> type | str | None:
    """The module class a config names (``subclass_mode``): the class where its path
    imports, else the name as written; ``None`` where the config names none."""
    class_path = (config.get("model") or {}).get("class_path")
    if not class_path:
        return None
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name) if module else class_path
    except (ImportError, AttributeError):
        return class_path


def tiny_for(app: App, recipe: Path, folder: Path) -> Path:
    """``tiny.yaml`` as it is laid over ``recipe``.

    Its ``model`` options are written for the default's module class; where the recipe
    names a class that is neither that one nor a subclass of it (``subclass_mode``), they
    are left out (a copy in ``folder``): that module keeps the recipe's sizes, and tiny's
    trainer and data still make it one step on small data.
    """
    try:
        tiny = tiny_config(app.package)
    except FileNotFoundError as err:
        pytest.fail(str(err))
    own, default = model_class(read_yaml(recipe)), model_class(read_yaml(app.default_config))
    if own is None or own == default:
        return tiny
    if isinstance(own, type) and isinstance(default, type) and issubclass(own, default):
        return tiny
    config = {key: value for key, value in read_yaml(tiny).items() if key != "model"}
    copy = folder / f"tiny_for_{recipe.stem}.yaml"
    copy.write_text(yaml.safe_dump(config))
    return copy


def second_stage_options(app: App, recipe: Path, folder: Path) -> list[str]:
    """Options that give a second-stage recipe the checkpoint of its first stage.

    A recipe that starts from an earlier run (``model.pretrained`` naming a run's
    ``last.ckpt``, as the chest X-ray preference recipe does) gets the ``last.ckpt`` of a
    tiny ``fit`` of the app's default instead; other recipes (a model named by a keyword,
    such as the code app's ``smollm2``, included) get nothing.
    """
    config = read_yaml(recipe)
    pretrained = model_init_args(config).get("pretrained")
    if not isinstance(pretrained, str) or not pretrained.endswith(".ckpt"):
        return []
    if (REPO / pretrained).exists():
        return []
    root = folder / "first_stage"
    tiny = str(tiny_config(app.package))
    app.main()(["fit", "--config", tiny, "--trainer.default_root_dir", str(root)])
    checkpoint = root / "version_0" / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file(), f"the first stage of {recipe.name} left no {checkpoint}"
    prefix = "--model.init_args" if "class_path" in (config.get("model") or {}) else "--model"
    return [f"{prefix}.pretrained", str(checkpoint)]


@pytest.mark.usefixtures("isolated_cache")
@pytest.mark.parametrize(("app", "recipe"), recipe_cases())
def test_recipe_instantiates_and_takes_one_step(app: App, recipe: Path, tmp_path: Path) -> None:
    tiny = tiny_for(app, recipe, tmp_path)
    run_root = tmp_path / "runs"
    args = ["--config", str(recipe), "--config", str(tiny)]
    args += second_stage_options(app, recipe, tmp_path)
    cli = app.main()([*args, "--trainer.default_root_dir", str(run_root)], run=False)
    assert isinstance(cli.model, FineTuneModule)
    assert isinstance(cli.datamodule, pl.LightningDataModule)
    assert isinstance(cli.trainer, pl.Trainer)
    assert not run_root.exists(), "run=False writes nothing"
    losses = one_training_step(cli, tmp_path / "step")
    assert len(losses) == 1 and math.isfinite(losses[0]), losses


# ----------------------------------------------------------------------------- help
def module_class_paths(app: App) -> list[str]:
    """The module classes the default and the recipes name (``subclass_mode``); else none."""
    paths = {(read_yaml(path).get("model") or {}).get("class_path") for path in app.recipes()}
    return sorted(p for p in paths if p)


def help_text(app: App, args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """What ``main(args)`` prints before it exits with code 0."""
    with pytest.raises(SystemExit) as exit:
        app.main()(args)
    out = capsys.readouterr().out
    assert exit.value.code in (0, None), out[-3000:]
    return out


@pytest.mark.parametrize("package", APPS)
def test_help_lists_the_adapter_methods_and_base_options(
    package: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # no adapter name broken across lines
    app = App(package)
    methods = sorted(cls.__name__ for cls in ADAPTER_REGISTRY.values())
    fit_help = help_text(app, ["fit", "--help"], capsys)
    classes = module_class_paths(app)
    helps = {"fit --help": fit_help}
    for class_path in classes:  # subclass_mode: each module class has its own help
        helps[f"fit --model.help {class_path}"] = help_text(
            app, ["fit", "--model.help", class_path], capsys
        )
    if classes:
        assert "--model.help" in fit_help
        del helps["fit --help"]
    for command, text in helps.items():
        missing = [name for name in [*methods, "--model.monitor"] if name not in text]
        assert not missing, f"{package}: `{command}` does not list {missing}"
