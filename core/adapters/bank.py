"""AdapterBank: many adapters of one kind on the same layers, one chosen per sample.

Each sample of a batch carries an integer id (language, task, tenant) naming the adapter
that serves it; ``-1`` means "base model only". All of the bank's adapters train at once:
each gets gradient only from its own samples.

Plain LoRA adapters are stored as stacks (:class:`~core.adapters.lora_stack.LoraStackUnit`)
and served by the multi-adapter kernel (:mod:`fused_kernels.multi_lora`): one base GEMM for the
batch plus a grouped low-rank update. Other methods (SSF, bottleneck, DoRA, ...) keep one
unit per name and go through :func:`core.adapters.routing.routed_forward`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .api import _replace_module, inject, logical_modules
from .config import AdapterConfig
from .io import PEFT_PREFIX, read_adapter, save_adapter, write_adapter_dir
from .layer import AdapterLayer, AdapterUnit
from .lora_stack import StackRouter
from .registry import AdapterMethod, get_method
from .targeting import resolve_targets

STACK_KEY = "adapter_bank"


class AdapterBank(nn.Module):
    """Wraps a model holding N adapters of one method and routes each sample to its own.

    ``configs`` is one config used for every name, or a mapping name -> config (for example
    different LoRA ranks per language). ``bank(inputs, adapter_ids=ids)`` runs the model with
    routing; ``bank.route(ids)`` is the same as a context manager around custom calls, and
    ``bank.generate(inputs, adapter_ids=ids, ...)`` generates with each sample on its adapter.
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
        residual = [n for n, c in configs.items() if c.rewrites_base]
        if residual:
            raise ValueError(
                f"AdapterBank adapters must leave the shared base weights unchanged, but "
                f"{residual} use an init that rewrites W0 (LoRA init='pissa'/'corda', LoLDU); "
                "use LoRA with init='default' or 'gaussian'."
            )
        self.model = model
        self.names = list(configs)
        self.configs = dict(configs)
        method = get_method(methods.pop())
        self.stacked = _stackable(method, list(configs.values())) and _targets_stack(
            model, method, next(iter(configs.values()))
        )
        if self.stacked:
            self._inject_stacks(method)
        else:
            for name, config in configs.items():
                inject(model, config, name=name)
        self.layers = [m for m in model.modules() if isinstance(m, AdapterLayer)]
        for layer in self.layers:
            for name in [*self.names, STACK_KEY]:
                if name in layer.adapters:
                    layer.adapters[name].requires_grad_(True)

    def _inject_stacks(self, method: AdapterMethod) -> None:
        """Put one stacked unit holding every adapter on each target layer."""
        stacking = method.stacking
        assert stacking is not None  # _stackable checked it
        configs = [self.configs[n] for n in self.names]
        modules = logical_modules(self.model)
        targets = resolve_targets(
            self.model, configs[0].target_modules, stacking.supports, method.name, modules=modules
        )
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.stack_layers: dict[str, AdapterUnit] = {}
        self.router = StackRouter(len(self.names))
        for target in targets:
            base = modules[target]
            unit = stacking.build(base, target, configs, self.router)
            layer = self.model.get_submodule(target)
            if not isinstance(layer, AdapterLayer):
                layer = AdapterLayer(base)
                _replace_module(self.model, target, layer)
            layer.add(STACK_KEY, unit)
            layer.active = [*layer.active, STACK_KEY]
            self.stack_layers[target] = unit

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
    def route(self, adapter_ids: Tensor, expand: bool = False) -> Iterator[None]:
        """Inside the block, sample b of every batch the model sees uses adapter
        ``adapter_ids[b]`` (-1: the base model alone).

        With ``expand``, a batch may also hold k consecutive rows per sample (as
        ``generate`` lays out beams and returned sequences); each row then uses its sample's
        adapter. Without it, a batch whose size differs from ``len(adapter_ids)`` is an error.
        """
        adapter_ids = torch.as_tensor(adapter_ids, dtype=torch.long)
        if adapter_ids.numel() and (
            int(adapter_ids.max()) >= len(self.names) or int(adapter_ids.min()) < -1
        ):
            raise ValueError(
                f"adapter_ids must lie in [-1, {len(self.names) - 1}] for this bank of "
                f"{len(self.names)} adapters; got min {int(adapter_ids.min())}, "
                f"max {int(adapter_ids.max())}."
            )
        if self.stacked:  # one shared router: nothing to set per layer
            self.router.start(adapter_ids, expand)
            try:
                yield
            finally:
                self.router.stop()
            return
        for layer in self.layers:
            if all(n in layer.adapters for n in self.names):
                ids = adapter_ids.to(layer.base_layer.weight.device)
                layer.routing = (self.names, ids, expand)
        try:
            yield
        finally:
            for layer in self.layers:
                layer.routing = None

    def forward(self, *args: Any, adapter_ids: Tensor, **kwargs: Any) -> Any:
        with self.route(adapter_ids):
            return self.model(*args, **kwargs)

    def generate(self, *args: Any, adapter_ids: Tensor, **kwargs: Any) -> Any:
        """``model.generate(*args, **kwargs)`` with sample b on adapter ``adapter_ids[b]``.

        Beam search and ``num_return_sequences`` widen the batch to several rows per
        sample; those rows keep their sample's adapter (see :meth:`route`).
        """
        generate = getattr(self.model, "generate", None)
        if generate is None:
            raise TypeError(
                f"{type(self.model).__name__} has no generate(); call the bank directly "
                "(bank(inputs, adapter_ids=ids)) or use a generative (Hugging Face) model."
            )
        with self.route(adapter_ids, expand=True):
            return generate(*args, **kwargs)

    def adapter_tensors(self, name: str) -> dict[str, Tensor]:
        """Adapter ``name`` of a stacked LoRA bank under PEFT keys (views, not copies)."""
        k = self.index(name)
        return {
            f"{PEFT_PREFIX}{target}.{local}": tensor
            for target, unit in self.stack_layers.items()
            for local, tensor in unit.adapter_tensors(k).items()
        }

    def save(self, path: str | Path) -> None:
        """Save each adapter in PEFT layout under ``path/<name>/``."""
        for name in self.names:
            if not self.stacked:
                save_adapter(self.model, Path(path) / name, name=name)
                continue
            tensors = {
                k: v.detach().cpu().clone().contiguous()
                for k, v in self.adapter_tensors(name).items()
            }
            write_adapter_dir(Path(path) / name, tensors, self.configs[name].to_json_dict())

    def load(self, path: str | Path, name: str) -> None:
        """Fill stacked adapter ``name`` from a PEFT-layout directory (shapes are checked)."""
        if not self.stacked:
            raise RuntimeError("load() fills stacked LoRA banks; use load_adapter otherwise.")
        _, tensors = read_adapter(path)
        targets = self.adapter_tensors(name)
        missing = sorted(set(targets) - set(tensors))
        if missing:
            raise ValueError(f"adapter {str(path)!r} lacks tensors {missing[:5]} for {name!r}.")
        for key, view in targets.items():
            if tuple(tensors[key].shape) != tuple(view.shape):
                raise ValueError(
                    f"adapter tensor {key!r} in {str(path)!r} has shape "
                    f"{tuple(tensors[key].shape)} but bank adapter {name!r} expects "
                    f"{tuple(view.shape)}."
                )
        with torch.no_grad():
            for key, view in targets.items():
                view.copy_(tensors[key].to(view.dtype))


def _targets_stack(model: nn.Module, method: AdapterMethod, config: AdapterConfig) -> bool:
    """Whether every layer the configs target can hold a stack (LoRA stacks: linear layers).

    A bank over other layers too (the 1x1 convolutions of a CNN) keeps one unit per name
    and routes samples with :func:`core.adapters.routing.routed_forward`.
    """
    stacking = method.stacking
    assert stacking is not None  # _stackable checked it
    modules = logical_modules(model)
    targets = resolve_targets(model, config.target_modules, method.supports, method.name, modules)
    return all(stacking.supports(modules[t]) for t in targets)


def _stackable(method: AdapterMethod, configs: list[AdapterConfig]) -> bool:
    """Adapters go in stacks when their method registers a ``Stacking``, every config is
    ``stackable`` (plain LoRA, not DoRA) and the stacking accepts them together (LoRA: the
    same layers and one dropout)."""
    stacking = method.stacking
    return stacking is not None and all(c.stackable for c in configs) and stacking.accepts(configs)
