"""Make a resumed fit continue exactly as the interrupted one would have: the global RNGs.

Lightning restores weights, optimizer, LR scheduler and loop counters from a checkpoint,
but not the global random number generators (torch, CUDA, numpy, ``random``). A resumed
run is seeded afresh (``seed_everything``), so from the first resumed epoch on it draws
different numbers than the uninterrupted run did at the same point: above all the order in
which a ``DataLoader(shuffle=True)`` visits the data (its ``RandomSampler`` seeds itself
from the global torch generator at every epoch), and dropout masks. On the example app this
alone put a run resumed after 3 of 8 epochs 0.41 (max |dw|) away from an uninterrupted one.

:class:`ResumeRngState` stores the generators' states in every checkpoint (taken at the
moment the checkpoint is written, i.e. where training stopped) and puts them back when a
``fit`` resumes from it, in ``on_fit_start``: after the model and optimizers are built (their
random draws belong to the start of a run) and before the first training batch is drawn.
"""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn


def capture_rng_states() -> dict[str, Any]:
    """The states of the global torch, CUDA, numpy and ``random`` generators.

    Everything is a tensor, int, float, str, list or None, so a checkpoint holding it loads
    with ``torch.load(weights_only=True)``.
    """
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set the global generators to ``states`` (from :func:`capture_rng_states`).

    CUDA states are restored only when as many devices are visible as were saved (on
    another machine they would not describe the same generators).
    """
    torch.set_rng_state(states["torch"])
    np_state = states["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py = states["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class ResumeRngState(Callback):
    """Save the global RNG states in every checkpoint; restore them when ``fit`` resumes.

    With it (and a ``last.ckpt`` that holds the last step, see
    :class:`core.training.checkpointing.LastStepCheckpoint`), a run killed and resumed from
    an end-of-epoch checkpoint ends with the same weights as an uninterrupted run on CPU
    with ``deterministic: true``. Limits: a checkpoint written in the middle of an epoch
    resumes with a new shuffle of that epoch (Lightning restarts a plain DataLoader; exact
    mid-epoch resume needs a stateful loader); random numbers drawn in ``on_fit_start`` or
    ``on_train_start`` hooks are not replayed; DDP ranks all restore global rank zero's state
    (which equals theirs when every rank was seeded alike, as ``seed_everything`` does).
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None
        self._fit_started = False

    def state_dict(self) -> dict[str, Any]:
        """The RNG states at the moment the checkpoint is written."""
        return capture_rng_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the states for ``on_fit_start`` (or apply them now if fit already started:
        strategies that restore checkpoints after setup call this later)."""
        self._pending = state_dict
        if self._fit_started:
            self._apply()

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Warn when a fit resumes from a checkpoint written without this callback."""
        if trainer.state.fn == TrainerFn.FITTING and self.state_key not in checkpoint.get(
            "callbacks", {}
        ):
            rank_zero_warn(
                f"ResumeRngState: the checkpoint {trainer.ckpt_path!r} holds no RNG state (it "
                "was written without core.training.resume.ResumeRngState), so the resumed run "
                "shuffles its data differently from an uninterrupted run and its weights will "
                "differ."
            )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_started = True
        self._apply()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._pending = None
        self._fit_started = False

    def _apply(self) -> None:
        if self._pending is not None:
            restore_rng_states(self._pending)
            self._pending = None
