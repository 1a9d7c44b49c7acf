"""Snapshots: a network's tensors kept as buffers, and the network run on them frozen.

LwF (its teacher) and DR-Tune (the pre-trained encoder) keep an earlier state of a network
instead of a deep copy: the parameters and buffers go into a :class:`TensorStore` (so the
checkpoint carries them), and the *current* module is run on those tensors with
``torch.func.functional_call``, in eval mode. EWC's Fisher runs the model on explicit
weights the same way. These three helpers are that shared code, in one place.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .base import TensorStore

__all__ = ["call_with_state", "eval_mode", "take_snapshot"]


@torch.no_grad()
def take_snapshot(module: nn.Module, store: TensorStore) -> None:
    """Replace what ``store`` holds with detached copies of ``module``'s parameters and buffers.

    Keys are the names of ``module.named_parameters()`` then ``module.named_buffers()``, so
    ``functional_call(module, dict(store.items()), ...)`` runs the module as it is now.
    """
    store.clear()
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        store[name] = t.detach().clone()


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode for the block, then back in the mode it had (even on error).

    Dropout off and batch-norm statistics fixed while a snapshot or a Fisher is evaluated;
    the caller's training loop finds the module as it left it.
    """
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def call_with_state(module: nn.Module, state: Mapping[str, Tensor] | Any, inputs: Any) -> Any:
    """``module(inputs)`` computed with the tensors of ``state`` instead of its own.

    A dict of inputs is passed as keyword arguments (Hugging Face models), anything else as
    the one positional argument. ``state`` is what ``functional_call`` takes: a mapping of
    names to tensors, or a tuple of such mappings.
    """
    if isinstance(inputs, dict):
        return functional_call(module, state, args=(), kwargs=inputs)
    return functional_call(module, state, (inputs,))
