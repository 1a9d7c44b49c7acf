"""AdapterBank: many adapters of one kind on the same layers, one chosen per sample.

Each sample of a batch carries an integer id (language, task, tenant) naming the adapter
that serves it; ``-1`` means "base model only". All of the bank's adapters train at once:
each gets gradient only from its own samples. The per-row computation lives in
:func:`core.adapters.routing.routed_forward` alone, so a fused multi-adapter kernel can
replace it in one place.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .api import inject
from .config import AdapterConfig
from .io import save_adapter
from .layer import AdapterLayer


class AdapterBank(nn.Module):
    """Wraps a model holding N adapters of one method and routes each sample to its own.

    ``configs`` is one config used for every name, or a mapping name -> config (for example
    different LoRA ranks per language). ``bank(inputs, adapter_ids=ids)`` runs the model with
    routing; ``bank.route(ids)`` is the same as a context manager around custom calls.
    """

    def __init__(
        self,
        model: nn.Module,
        configs: AdapterConfig | Mapping[str, AdapterConfig],
        names: list[str] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(configs, AdapterConfig):
            if not names:
                raise ValueError("AdapterBank needs names=[...] when given a single config.")
            configs = {n: configs for n in names}
        methods = {c.method for c in configs.values()}
        if len(methods) != 1:
            raise ValueError(
                f"AdapterBank holds adapters of one method; got {sorted(methods)}. "
                "Use one bank per method."
            )
        residual = [n for n, c in configs.items() if _rewrites_base(c)]
        if residual:
            raise ValueError(
                f"AdapterBank adapters must leave the shared base weights unchanged, but "
                f"{residual} use an init that rewrites W0 (LoRA init='pissa'/'corda', LoLDU); "
                "use LoRA with init='default' or 'gaussian'."
            )
        self.model = model
        self.names = list(configs)
        for name, config in configs.items():
            inject(model, config, name=name)
        self.layers = [m for m in model.modules() if isinstance(m, AdapterLayer)]
        for layer in self.layers:
            for name in self.names:
                if name in layer.adapters:
                    layer.adapters[name].requires_grad_(True)

    def index(self, name: str) -> int:
        """The integer id of an adapter name."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"no adapter {name!r} in this bank; names: {self.names}") from None

    def ids(self, names: list[str]) -> Tensor:
        """Integer ids for a list of adapter names (one per sample)."""
        return torch.tensor([self.index(n) for n in names], dtype=torch.long)

    @contextmanager
    def route(self, adapter_ids: Tensor) -> Iterator[None]:
        adapter_ids = torch.as_tensor(adapter_ids, dtype=torch.long)
        if adapter_ids.numel() and (
            int(adapter_ids.max()) >= len(self.names) or int(adapter_ids.min()) < -1
        ):
            raise ValueError(
                f"adapter_ids must lie in [-1, {len(self.names) - 1}] for this bank of "
                f"{len(self.names)} adapters; got min {int(adapter_ids.min())}, "
                f"max {int(adapter_ids.max())}."
            )
        for layer in self.layers:
            names = [n for n in self.names if n in layer.adapters]
            if len(names) == len(self.names):
                layer.routing = (self.names, adapter_ids.to(layer.base_layer.weight.device))
        try:
            yield
        finally:
            for layer in self.layers:
                layer.routing = None

    def forward(self, *args: Any, adapter_ids: Tensor, **kwargs: Any) -> Any:
        with self.route(adapter_ids):
            return self.model(*args, **kwargs)

    def save(self, path: str | Path) -> None:
        """Save each adapter in PEFT layout under ``path/<name>/``."""
        for name in self.names:
            save_adapter(self.model, Path(path) / name, name=name)


def _rewrites_base(config: AdapterConfig) -> bool:
    return config.method == "loldu" or getattr(config, "init", "") in ("pissa", "corda")
