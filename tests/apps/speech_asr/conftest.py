"""Shared fixtures of the speech app's tests: one intra-op thread, a private cache, and one
tiny fit + test run (and its full fine-tuning twin) for the tests that need trained models."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.cache import CACHE_ENV
from tests.threads import one_thread  # noqa: F401  (autouse fixture)

TINY = Path(__file__).resolve().parents[3] / "apps" / "speech_asr" / "configs" / "tiny.yaml"
#: A few more steps than tiny.yaml alone: three validations, so the dev history has a curve.
SHORT = [
    "--trainer.max_steps", "6", "--trainer.limit_train_batches", "null",
    "--trainer.val_check_interval", "2", "--trainer.limit_test_batches", "null",
]  # fmt: skip


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Cache entries (corpus, foundation) go to a folder of this session, not ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
        yield


def tiny_fit_test(root: Path, *options: str, recipe: str | None = None):
    """``python -m apps.speech_asr.train [--config <recipe>] --config tiny.yaml`` (fit, then
    test) in-process, a little longer than tiny.yaml alone (``SHORT``)."""
    from apps.speech_asr.train import main

    recipe_args = ["--config", str(TINY.parent / recipe)] if recipe else []
    return main(
        [*recipe_args, "--config", str(TINY), *SHORT, "--trainer.default_root_dir", str(root),
         *options]
    )  # fmt: skip


@pytest.fixture(scope="session")
def adapter_run(tmp_path_factory):
    """A tiny per-language adapter run: (cli, run folder)."""
    cli = tiny_fit_test(tmp_path_factory.mktemp("adapters"))
    return cli, Path(cli.trainer.log_dir)


@pytest.fixture(scope="session")
def full_run(tmp_path_factory):
    """A tiny full fine-tuning run with a large step size, so the head languages move."""
    cli = tiny_fit_test(
        tmp_path_factory.mktemp("full"), "--model.optimizer.init_args.lr", "0.05",
        recipe="full_finetune.yaml",
    )  # fmt: skip
    return cli, Path(cli.trainer.log_dir)
