"""The one Regularizer protocol: one object, importable from both packages, penalty-only."""

from __future__ import annotations

from jsonargparse import ArgumentParser

import core.regularizers
import core.training
from core.regularizers import EWC, L2SP
from core.training.regularizer_protocol import Regularizer

from .toys import ConstantPenalty


def test_training_and_regularizers_export_the_same_protocol() -> None:
    assert core.training.Regularizer is Regularizer
    assert core.regularizers.Regularizer is Regularizer


def test_only_penalty_is_required() -> None:
    assert isinstance(ConstantPenalty(), Regularizer)  # penalty only, no update
    assert isinstance(EWC(1.0), Regularizer)
    assert not isinstance(object(), Regularizer)


def test_a_yaml_class_path_is_accepted_with_or_without_update() -> None:
    # What LightningCLI does with ``regularizers: list[Regularizer]`` in a recipe.
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--regularizers", type=list[Regularizer])
    config = parser.parse_args(
        [
            "--regularizers",
            '[{"class_path": "core.regularizers.L2SP", "init_args": {"alpha": 0.5}},'
            ' {"class_path": "tests.core.training.toys.ConstantPenalty"}]',
        ]
    )
    built = parser.instantiate_classes(config).regularizers
    assert isinstance(built[0], L2SP) and built[0].alpha == 0.5
    assert isinstance(built[1], ConstantPenalty)
