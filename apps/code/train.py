"""``python -m apps.code.train [fit|validate|test|predict] [options]``.

With no arguments: pre-train the embedded base if it is not cached yet, fit LoRA adapters on
the five embedded tasks with the task-balanced loss (``configs/default.yaml``), then test:
per-task loss before/after, forgetting perplexity, FIM exact match and HumanEval pass@k, in
``runs/code/version_<n>/`` (``report.md``, ``eval.json``, ``metrics.json``, ``adapter/``).
``--config apps/code/configs/tiny.yaml`` makes that a one-step run of seconds.
``fit --help`` lists every option.

No options are linked: the tokenizer, which model and data share, is not an option of both
but goes from the model to the data module at ``setup``; the model's sequence lengths
(``model.base.seq_len``: pre-training windows) and the data's (``data.seq_len``: packed
rows) are different things. (The embedded base's FIM sentinels, ``model.base.sentinels``,
should match ``data.fim_prefix/fim_suffix/fim_middle``; both default to StarCoder's, and a
link cannot reach a field inside the optional ``model.base`` dataclass.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from core.training import FineTuneCLI, run_cli

from .data import CodeDataModule
from .module import CodeModule

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


def main(args: Sequence[str] | None = None, run: bool = True) -> FineTuneCLI:
    """Run the code app's command line (``args=None`` reads ``sys.argv``).

    ``run=False`` only instantiates model, data and trainer from the config (a recipe check).
    """
    return run_cli(CodeModule, CodeDataModule, DEFAULT_CONFIG, args=args, run=run)


if __name__ == "__main__":
    main()
