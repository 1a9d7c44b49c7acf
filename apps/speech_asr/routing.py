"""Per-sample language routing through an ``AdapterBank``, shared by the speech modules.

Both the streaming Emformer module and the Whisper module hold one adapter per tail language
(``adapter_routing: per_language``) or one for all of them (``shared``) in a bank, and route
every sample of a mixed-language batch to its own: a head language, and the frozen
foundation, use none (id -1).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from core.adapters import AdapterBank

ROUTINGS = ("per_language", "shared")
#: The one adapter of ``adapter_routing: shared``.
SHARED = "shared"


def check_routing(routing: str) -> None:
    """Refuse an unknown ``model.adapter_routing`` value, naming the choices."""
    if routing not in ROUTINGS:
        raise ValueError(f"model.adapter_routing={routing!r} must be one of {', '.join(ROUTINGS)}.")


def bank_names(languages: list[str], routing: str) -> list[str]:
    """The bank's adapter names: one per tail language, or the single shared one."""
    return list(languages) if routing == "per_language" else [SHARED]


class LanguageRouting:
    """Mixin: ``adapter_ids`` and ``route`` for a module with ``adapter_bank`` (or None),
    ``languages`` (the tail languages) and ``routing`` attributes."""

    adapter_bank: AdapterBank | None
    languages: list[str]
    routing: str

    def adapter_ids(self, languages: list[str]) -> Tensor:
        """The bank id of each sample's language: its own adapter (``per_language``), the
        shared one, or -1 (a head language: the foundation alone)."""
        bank = self.adapter_bank
        assert bank is not None
        ids = []
        for lang in languages:
            if lang not in self.languages:
                ids.append(-1)
            else:
                ids.append(bank.index(lang if self.routing == "per_language" else SHARED))
        return torch.tensor(ids, dtype=torch.long)

    @contextmanager
    def route(
        self, languages: list[str], foundation_only: bool = False, expand: bool = False
    ) -> Iterator[None]:
        """Inside the block, each sample of the model's batches uses its language's adapter
        (``foundation_only``: none, the frozen foundation). ``expand``: batches may hold
        several consecutive rows per sample (beam search), each on its sample's adapter."""
        if self.adapter_bank is None:
            yield
            return
        ids = self.adapter_ids(languages)
        if foundation_only:
            ids = torch.full_like(ids, -1)
        with self.adapter_bank.route(ids, expand=expand):
            yield
