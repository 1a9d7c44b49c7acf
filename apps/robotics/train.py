"""``python -m apps.robotics.train [fit|validate|test] [options]``.

With no arguments: record scripted-expert demonstrations of the embedded tabletop suite into a
LeRobotDataset v3.0 folder (cached), encode their frames once with the frozen ImageNet
EfficientNet-Lite0 trunk (cached), fine-tune the vision-language-action policy (MiniLM
instruction embedding, FiLM, spatial softmax, L1 action-chunk head; the image tower's top
block fine-tuned in full, or an adapter on it with ``lora.yaml`` and the like) by behaviour
cloning, then test it closed loop on 100 held-out seeds per
instruction condition (trained wording, held-out paraphrases, blank) with Wilson intervals,
beside the expert, random and language-blind baselines. Outputs go to
``runs/robotics/version_<n>``: checkpoints, metrics.json, evaluation.json, report.md, rollout
GIFs, ``policy.json`` (the policy's config and normalisation) and, with an adapter,
``adapter/`` (PEFT layout).
Recipes: ``--config apps/robotics/configs/<recipe>.yaml``; a run of seconds:
``--config apps/robotics/configs/tiny.yaml``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from core.training import FineTuneCLI, run_cli

from .data import RoboticsDataModule
from .module import PolicyModule

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"
CONFIG_DIR = DEFAULT_CONFIG.parent

#: Options model and data share: the user sets the data's, the model's follows.
LINKS = {
    "data.chunk_size": "model.chunk_size",  # the action chunks the head predicts
    "data.trunk_split": "model.trunk_split",  # cached trunk features = the policy's trunk
    "data.pretrained_trunk": "model.pretrained_towers",  # ImageNet or random towers
    "data.seed": "model.tower_seed",  # the random towers' initialisation
}


def main(args: Sequence[str] | None = None, run: bool = True) -> FineTuneCLI:
    """Run the robotics app's command line (``args=None`` reads ``sys.argv``).

    ``run=False`` only instantiates model, data and trainer from the config (a recipe check).
    """
    return run_cli(
        PolicyModule, RoboticsDataModule, DEFAULT_CONFIG, args=args, run=run, links=LINKS
    )


if __name__ == "__main__":
    main()
