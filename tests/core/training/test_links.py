"""run_cli links: an option model and data share is set once, on the data; giving the model's
copy is an error naming the source; a resumed run keeps the checkpoint's value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from core.training import FineTuneModule, UsageError, run_cli
from core.training.links import (
    HiddenOption,
    check_links,
    given_keys,
    hidden_option,
    parser_key,
    plain_key,
)
from tests.core.training.toys import ToyData, ToyNet

LINKS = {"data.features": "model.features"}


class SizedModule(FineTuneModule):
    """A classifier over ``features`` inputs.

    Args:
        features: Input size; linked to ``data.features``.
    """

    def __init__(self, features: int = 6, **kwargs: Any) -> None:
        torch.manual_seed(0)
        super().__init__(model=ToyNet(in_features=features), **kwargs)
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def shared_step(self, batch: Any, stage: str) -> dict[str, Any]:
        x, y = batch
        return {"loss": self.loss_fn(self(x), y)}


class UnsizedModule(SizedModule):
    """A module of the same app without the linked argument (another recipe's module)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(features=6, **kwargs)


class SizedData(ToyData):
    """The toy blobs, with inputs of ``features`` dimensions (zero-padded or cut)."""

    def __init__(self, features: int = 6, batch_size: int = 16) -> None:
        super().__init__(batch_size=batch_size)
        self.features = features

    def _resize(self, dataset: TensorDataset) -> TensorDataset:
        x, y = dataset.tensors
        x = torch.nn.functional.pad(x, (0, max(0, self.features - x.shape[1])))
        return TensorDataset(x[:, : self.features], y)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._resize(self.train_set), batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._resize(self.val_set), batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self._resize(self.test_set), batch_size=self.batch_size)


FAST = [
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "2",
    "--trainer.limit_val_batches",
    "1",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
]


def configs(tmp_path: Path) -> dict[bool, Path]:
    """``{subclass_mode: default config}``; neither sets ``model.features``."""
    plain = tmp_path / "plain.yaml"
    plain.write_text("data:\n  batch_size: 16\n")
    picked = tmp_path / "picked.yaml"
    picked.write_text(
        "model:\n  class_path: tests.core.training.test_links.SizedModule\n"
        "data:\n  batch_size: 16\n"
    )
    return {False: plain, True: picked}


def cli(
    tmp_path: Path, subclass_mode: bool, args: list[str], config: Path | None = None, **kwargs: Any
) -> Any:
    """run_cli on the sized toy app (``config``: the default config, written if not given)."""
    module_cls = FineTuneModule if subclass_mode else SizedModule
    config = config or configs(tmp_path)[subclass_mode]
    return run_cli(
        module_cls, SizedData, config, args=args, subclass_mode=subclass_mode, links=LINKS, **kwargs
    )


MODES = pytest.mark.parametrize("subclass_mode", [False, True], ids=["class-fixed", "class-picked"])


@MODES
def test_the_data_option_sets_the_model_option(tmp_path, subclass_mode) -> None:
    made = cli(tmp_path, subclass_mode, ["--data.features", "9"], run=False)
    assert made.datamodule.features == 9 and made.model.features == 9
    assert made.model.model.fc1.in_features == 9
    default = cli(tmp_path, subclass_mode, [], run=False)
    assert default.model.features == default.datamodule.features == 6


@MODES
def test_a_fit_with_the_linked_option_runs(tmp_path, subclass_mode) -> None:
    root = ["--trainer.default_root_dir", str(tmp_path / "runs")]
    made = cli(tmp_path, subclass_mode, ["fit", *FAST, *root, "--data.features", "4"])
    assert made.model.model.fc1.in_features == 4 and made.trainer.global_step == 2
    saved = (Path(made.trainer.log_dir) / "config.yaml").read_text()
    assert "features: 4" in saved


@MODES
@pytest.mark.parametrize("where", ["option", "user-config", "default-config"])
def test_giving_the_linked_option_is_an_error_naming_the_source(
    tmp_path, subclass_mode, where
) -> None:
    default = configs(tmp_path)[subclass_mode]
    if where == "option":
        key = "--model.init_args.features" if subclass_mode else "--model.features"
        args = [key, "3"]
    elif where == "user-config":
        user = tmp_path / "user.yaml"
        nested = "  init_args:\n    features: 3\n" if subclass_mode else "  features: 3\n"
        user.write_text("model:\n" + nested)
        args = ["--config", str(user)]
    else:
        args = []
        if subclass_mode:
            text = default.read_text().replace("SizedModule\n", "SizedModule\n  init_args:\n")
            default.write_text(text.replace("init_args:\n", "init_args:\n    features: 3\n"))
        else:
            default.write_text("model:\n  features: 3\n" + default.read_text())
    message = r"model\.features is set from data\.features.*set data\.features instead"
    with pytest.raises(UsageError, match=message):
        cli(tmp_path, subclass_mode, ["fit", *FAST, *args], config=default)
    assert not (tmp_path / "runs").exists()


def test_a_module_without_the_linked_argument_is_not_linked(tmp_path) -> None:
    args = ["--model", "tests.core.training.test_links.UnsizedModule", "--data.features", "6"]
    made = cli(tmp_path, True, args, run=False)
    assert type(made.model) is UnsizedModule and made.model.features == 6


@MODES
def test_resume_keeps_the_checkpoints_value(tmp_path, subclass_mode) -> None:
    root = ["--trainer.default_root_dir", str(tmp_path / "runs")]
    first = cli(tmp_path, subclass_mode, ["fit", *FAST, *root, "--data.features", "4"])
    last = Path(first.trainer.log_dir) / "checkpoints" / "last.ckpt"
    more = ["--trainer.max_epochs", "2", "--ckpt_path", str(last)]
    # Not given again: data and model take the checkpoint's 4 (the default is 6).
    second = cli(tmp_path, subclass_mode, ["fit", *FAST, *root, *more])
    assert second.datamodule.features == 4 and second.model.model.fc1.in_features == 4
    assert second.trainer.global_step == 4
    # Given with another value: a conflict, named.
    with pytest.raises(UsageError, match=r"trained with model\.features=4.*data\.features=5"):
        cli(tmp_path, subclass_mode, ["fit", *FAST, *root, *more, "--data.features", "5"])


def test_link_keys() -> None:
    assert plain_key("model.init_args.image_size") == "model.image_size"
    assert parser_key("model.image_size", subclass_mode=True) == "model.init_args.image_size"
    assert parser_key("model.image_size", subclass_mode=False) == "model.image_size"
    assert parser_key("data.image_size", subclass_mode=True) == "data.image_size"
    check_links({"data.image_size": "model.image_size"})
    with pytest.raises(ValueError, match=r"'trainer\.max_epochs' must name a model or data option"):
        check_links({"trainer.max_epochs": "model.epochs"})
    with pytest.raises(ValueError, match="linked to itself"):
        check_links({"model.x": "model.init_args.x"})


def test_given_keys_reads_options_and_config_files(tmp_path) -> None:
    user = tmp_path / "u.yaml"
    user.write_text("model:\n  class_path: a.B\n  init_args:\n    size: 3\ndata:\n  n: 1\n")
    argv = ["fit", "--config", str(user), "--model.init_args.depth=2", "--data.split_seed", "1"]
    assert given_keys(argv) == [
        ("model.size", f"in {user}"),
        ("data.n", f"in {user}"),
        ("model.depth", "with --model.init_args.depth"),
        ("data.split_seed", "with --data.split_seed"),
    ]


# ------------------------------------------------- a linked option two **kwargs levels deep
class DepthModule(SizedModule):
    """The middle of three levels: its own option; the rest, ``features`` too, passed on.

    Args:
        depth: An option of this level.
    """

    def __init__(self, depth: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.depth = depth


class TopModule(DepthModule):
    """The top of three levels: ``features`` comes through two ``**kwargs``.

    Args:
        beta: An option of this level.
    """

    def __init__(self, beta: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.beta = beta


class CopyingTopModule(DepthModule):
    """Passes a copy of its keyword arguments on, which jsonargparse does not follow.

    Args:
        beta: An option of this level.
    """

    def __init__(self, beta: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**dict(kwargs, depth=2))
        self.beta = beta


class CopyingDepthModule(SizedModule):
    """A middle level that passes a merged copy of its keyword arguments on.

    Args:
        depth: An option of this level.
    """

    def __init__(self, depth: int = 1, **kwargs: Any) -> None:
        options = {**kwargs}
        super().__init__(**options)
        self.depth = depth


class TopOverCopyingModule(CopyingDepthModule):
    """Passes its keyword arguments on as they are, to a level that hides them.

    Args:
        beta: An option of this level.
    """

    def __init__(self, beta: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.beta = beta


def leveled_cli(tmp_path: Path, subclass_mode: bool, module_cls: type, args: list[str]) -> Any:
    """``run_cli(run=False)`` on ``module_cls``: picked by the config, or the app's fixed class."""
    config = tmp_path / "leveled.yaml"
    picked = f"model:\n  class_path: {module_cls.__module__}.{module_cls.__qualname__}\n"
    config.write_text((picked if subclass_mode else "") + "data:\n  batch_size: 16\n")
    return run_cli(
        FineTuneModule if subclass_mode else module_cls,
        SizedData,
        config,
        args=args,
        subclass_mode=subclass_mode,
        links=LINKS,
        run=False,
    )


@MODES
def test_a_link_reaches_an_option_two_kwargs_levels_deep(tmp_path, subclass_mode) -> None:
    model = "--model.init_args." if subclass_mode else "--model."
    args = ["--data.features", "9", f"{model}depth", "3", f"{model}beta", "0.5"]
    made = leveled_cli(tmp_path, subclass_mode, TopModule, args)
    assert type(made.model) is TopModule and made.datamodule.features == 9
    assert made.model.features == 9 and made.model.model.fc1.in_features == 9
    assert (made.model.depth, made.model.beta) == (3, 0.5)
    with pytest.raises(UsageError, match=r"model\.features is set from data\.features"):
        leveled_cli(tmp_path, subclass_mode, TopModule, [f"{model}features", "9"])


@MODES
@pytest.mark.parametrize(
    ("module_cls", "hidden_by"),
    [(CopyingTopModule, "CopyingTopModule"), (TopOverCopyingModule, "CopyingDepthModule")],
    ids=["top-hides", "middle-hides"],
)
def test_a_link_kwargs_hide_from_jsonargparse_is_an_error_naming_it(
    tmp_path, subclass_mode, module_cls, hidden_by
) -> None:
    # jsonargparse does not list `features` for these classes; the link used to be skipped
    # without a word where the config picks the class (the model got features=6, the data 9).
    message = (
        rf"data\.features -> model\.features cannot reach tests\.core\.training\.test_links\."
        rf"{module_cls.__name__}: its base SizedModule takes 'features', but {hidden_by}\."
        r"__init__ passes its \*\*kwargs on .* super\(\)\.__init__\(\.\.\., \*\*kwargs\)"
    )
    with pytest.raises(TypeError, match=message):
        leveled_cli(tmp_path, subclass_mode, module_cls, ["--data.features", "9"])


def test_hidden_option_tells_hidden_kwargs_from_an_option_given_on_the_way() -> None:
    assert hidden_option(TopModule, "features") is None  # jsonargparse lists it
    assert hidden_option(UnsizedModule, "features") is None  # the class gives it itself
    assert hidden_option(TopModule, "no_such_option") is None
    assert hidden_option(CopyingTopModule, "features") == HiddenOption(
        "features", CopyingTopModule, CopyingTopModule, SizedModule
    )
    assert hidden_option(TopOverCopyingModule, "features") == HiddenOption(
        "features", TopOverCopyingModule, CopyingDepthModule, SizedModule
    )
    assert hidden_option(TopOverCopyingModule, "depth") is None  # listed: its own level's


def test_a_fixed_module_class_without_the_linked_option_is_an_error_naming_the_link(
    tmp_path,
) -> None:
    message = r"cannot link data\.features to model\.features \(.*\.UnsizedModule\)"
    with pytest.raises(ValueError, match=message):
        leveled_cli(tmp_path, False, UnsizedModule, [])
