"""``python -m apps.speech_asr.train [fit|validate|test] [options]``.

With no arguments: synthesize the embedded multilingual corpus (espeak-ng voices reading real
words of each language; cached), pre-train the streaming Emformer CTC foundation on the head
languages (es, de; cached after the first run), then train one bottleneck adapter per tail
language (lt, lv, sl, is) on mixed-language batches with the foundation frozen, and test by
streaming: WER/CER per language for the frozen foundation, the last step and the bank
assembled from each language's best dev step, head-language forgetting, the adapter's share
of the model. Outputs go to ``runs/speech_asr/version_<n>`` (checkpoints, metrics.json,
report.md, dev_cer.png, adapter/<language>/ and adapter_assembled/<language>/ in PEFT
layout). Recipes: ``--config apps/speech_asr/configs/<recipe>.yaml`` (full_finetune,
shared_adapter, lora); a run of seconds: ``--config apps/speech_asr/configs/tiny.yaml``.

``--config apps/speech_asr/configs/whisper.yaml`` trains per-language LoRA on the installed
multilingual Whisper base instead (:class:`apps.speech_asr.whisper.module.WhisperAdapterModule`).
Each recipe names its module class (``model.class_path``); model options are given as
``--model.<name>`` (or ``--model.init_args.<name>``), and ``fit --model.help <class>`` lists
a class's options.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from core.training import FineTuneCLI, FineTuneModule, run_cli

from .data import SpeechDataModule

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"
CONFIG_DIR = DEFAULT_CONFIG.parent

#: Options model and data share: the user sets the data's, the model's follows.
LINKS = {
    "data.languages": "model.languages",  # one adapter per tail language
    "data.head_languages": "model.head_languages",  # tested for forgetting
    "data.split_seed": "model.split_seed",  # the corpus the foundation pre-trains on
    "data.window_seconds": "model.encoder_seconds",  # Whisper: features fill its window
}


def main(args: Sequence[str] | None = None, run: bool = True) -> FineTuneCLI:
    """Run the speech app's command line (``args=None`` reads ``sys.argv``).

    ``run=False`` only instantiates model, data and trainer from the config (a recipe check).
    """
    return run_cli(
        FineTuneModule,
        SpeechDataModule,
        DEFAULT_CONFIG,
        args=args,
        app_name="speech_asr",
        subclass_mode=True,
        run=run,
        links=LINKS,
    )


if __name__ == "__main__":
    main()
