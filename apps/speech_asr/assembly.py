"""Export the assembled bank: each language's adapter from its own best dev step.

The module snapshots a language's adapter whenever its dev CER reaches a new low
(``SpeechAdapterModule.best_adapters``); after ``fit`` this callback writes the bank
assembled from those snapshots to ``<run_dir>/adapter_assembled/<language>/`` in PEFT
layout, with ``assembly.json`` naming each language's step and dev CER.
"""

from __future__ import annotations

import json
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

from core.atomic import atomic_write_text
from core.training.callbacks import RunDirCallback, append_manifest

ASSEMBLED_DIR = "adapter_assembled"


class AssembledAdapterExport(RunDirCallback):
    """After ``fit``, write the best-step assembled adapters of a per-language bank."""

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if getattr(pl_module, "adapter_bank", None) is None or not pl_module.best_adapters:
            return
        self.write_on_rank_zero(trainer, "on_fit_end", lambda: self.export(pl_module))

    def export(self, pl_module: Any) -> None:
        assert self.run_dir is not None, "setup() sets run_dir before fit ends"
        folder = self.run_dir / ASSEMBLED_DIR
        with pl_module.assembled() as steps:
            pl_module.adapter_bank.save(folder)
        summary = {
            lang: {"step": steps[lang], "dev_cer": best["cer"]}
            for lang, best in pl_module.best_adapters.items()
        }
        atomic_write_text(folder / "assembly.json", json.dumps(summary, indent=2) + "\n")
        append_manifest(self.run_dir, "adapter_assembled", folder, steps=steps)
        rank_zero_info(f"AssembledAdapterExport: best-step adapters written to {folder}")
