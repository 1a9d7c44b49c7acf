"""Elastic Weight Consolidation (Kirkpatrick et al., 2017) and its online variant.

Penalty: ``(lambda/2) * sum_t sum_i F_t,i (theta_i - theta*_t,i)^2``.

- **offline** keeps one (Fisher, anchor) term per finished task;
- **online** (Schwarz et al., 2018, "progress & compress") keeps a single term: the Fisher
  decays, ``F <- gamma * F + F_new``, and the anchor moves to the newest weights.

The diagonal Fisher is the mean over samples of the *squared per-sample gradient* of
``log p(y|x)``, computed exactly with ``torch.func`` (``vmap`` over ``grad``), never by
squaring a batch-averaged gradient (that estimates ``E[g]^2``, which is near zero at a
minimum, not ``E[g^2]``). The label ``y`` is chosen explicitly:

- ``"sampled"``: ``y ~ p(.|x)`` drawn from the model itself: the true Fisher (a one-sample
  Monte Carlo estimate of its expectation over labels);
- ``"true"``: the data set's label: the *empirical* Fisher.

The model is put in eval mode while estimating (dropout off, batch-norm statistics fixed)
and returned to its previous mode afterwards.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad, vmap

from .base import (
    ContinualRegularizer,
    TensorStore,
    default_inputs,
    default_logits,
    default_targets,
    register,
    select_parameters,
)
from .snapshot import call_with_state, eval_mode

LabelChoice = Literal["sampled", "true"]
#: A custom Fisher estimator: ``(model, data, params, generator) -> {name: F}``.
FisherFn = Callable[[nn.Module, Iterable[Any], dict[str, nn.Parameter], torch.Generator], Any]
PerSample = Literal["auto", "vmap", "loop"]
LABEL_CHOICES = ("sampled", "true")

__all__ = ["EWC", "LABEL_CHOICES", "OnlineEWC", "per_sample_fisher"]


def _check_labels(labels: str) -> None:
    if isinstance(labels, bool):
        raise ValueError(
            f"labels={labels!r} is a boolean; YAML reads an unquoted true as one. Write "
            "labels: 'true' (empirical Fisher) or labels: sampled (true Fisher)."
        )
    if labels not in LABEL_CHOICES:
        raise ValueError(
            f"labels={labels!r} is not a Fisher label choice; use 'sampled' (labels drawn "
            "from the model: true Fisher) or 'true' (data labels: empirical Fisher)."
        )


def _take(tree: Any, n: int) -> Any:
    """The first ``n`` samples of a tensor / dict / tuple of batched tensors."""
    if isinstance(tree, Tensor):
        return tree[:n]
    if isinstance(tree, dict):
        return {k: _take(v, n) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_take(v, n) for v in tree)
    return tree


def _unsqueeze(tree: Any) -> Any:
    if isinstance(tree, Tensor):
        return tree.unsqueeze(0)
    if isinstance(tree, dict):
        return {k: _unsqueeze(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_unsqueeze(v) for v in tree)
    return tree


def _batch_len(tree: Any) -> int:
    if isinstance(tree, Tensor):
        return int(tree.shape[0])
    if isinstance(tree, dict):
        return _batch_len(next(iter(tree.values())))
    if isinstance(tree, list | tuple):
        return _batch_len(tree[0])
    raise TypeError(f"cannot tell the batch size of model inputs of type {type(tree).__name__}.")


def _take_one(tree: Any, i: int) -> Any:
    """Sample ``i`` of a tensor / dict / tuple of batched tensors (batch dim dropped)."""
    if isinstance(tree, Tensor):
        return tree[i]
    if isinstance(tree, dict):
        return {k: _take_one(v, i) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_take_one(v, i) for v in tree)
    return tree


def _forward(model: nn.Module, inputs: Any) -> Any:
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def _log_likelihood(logits: Tensor, labels: Tensor, ignore_index: int) -> Tensor:
    """``log p(labels | x)`` summed over every labelled position (one sample, no batch dim).

    ``logits`` has shape ``(..., C)`` and ``labels`` shape ``(...)``: a classifier gives
    ``(C,)`` and ``()``, a token model ``(T, C)`` and ``(T,)``.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    picked = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return (picked * valid).sum()


def per_sample_fisher(
    model: nn.Module,
    data: Iterable[Any],
    labels: LabelChoice = "sampled",
    *,
    params: dict[str, nn.Parameter] | None = None,
    max_samples: int | None = None,
    generator: torch.Generator | None = None,
    input_fn: Callable[[Any], Any] = default_inputs,
    target_fn: Callable[[Any], Tensor] = default_targets,
    output_fn: Callable[[Any], Tensor] = default_logits,
    chunk_size: int | None = 64,
    ignore_index: int = -100,
    per_sample: PerSample = "auto",
) -> dict[str, Tensor]:
    """Diagonal Fisher of ``model`` on ``data``: mean over samples of squared per-sample grads.

    Args:
        model: The network; put in eval mode during the estimate, then restored.
        data: Iterable of batches (a DataLoader); ``input_fn`` / ``target_fn`` pick inputs
            and labels out of each batch.
        labels: ``"sampled"`` (true Fisher) or ``"true"`` (empirical Fisher).
        params: Parameters to estimate for, by name (default: trainable floating ones).
        max_samples: Subsample: stop after this many samples (``None``: all of ``data``).
        generator: Random source for ``"sampled"`` labels (seed it for reproducibility).
        chunk_size: Samples per ``vmap`` chunk: bounds memory to ``chunk_size`` gradient
            copies; ``None`` vectorizes each whole batch.
        ignore_index: Label value of unlabelled positions (token models).
        per_sample: How per-sample gradients are taken: ``"vmap"`` (``torch.func``, fast),
            ``"loop"`` (one ``torch.autograd.grad`` per sample: slower, works for any
            model, e.g. custom ``autograd.Function`` s without functorch support, like
            fused adapter kernels) or ``"auto"`` (vmap, falling back to the loop with a
            warning when the model cannot be vmapped). Both are exact.

    Returns:
        ``{name: F}`` with ``F`` the same shape as the parameter, float32, on its device.
    """
    _check_labels(labels)
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples={max_samples} must be >= 1 or None (use all data).")
    if per_sample not in ("auto", "vmap", "loop"):
        raise ValueError(f"per_sample={per_sample!r} must be 'auto', 'vmap' or 'loop'.")
    params = dict(params) if params is not None else select_parameters(model)
    if not params:
        raise ValueError(
            "per_sample_fisher: the model has no trainable floating-point parameters to "
            "estimate a Fisher for; unfreeze them or pass params=."
        )
    fixed = {
        n: t for n, t in [*model.named_parameters(), *model.named_buffers()] if n not in params
    }
    weights = {n: p.detach() for n, p in params.items()}
    total = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in weights.items()}

    def log_lik(w: dict[str, Tensor], x: Any, y: Tensor) -> Tensor:
        out = output_fn(call_with_state(model, (w, fixed), _unsqueeze(x)))
        return _log_likelihood(out[0], y, ignore_index)

    vmapped = vmap(grad(log_lik), in_dims=(None, 0, 0), chunk_size=chunk_size)

    def looped(inputs: Any, y: Tensor) -> dict[str, Tensor]:
        names, tensors = list(params), list(params.values())
        out: dict[str, list[Tensor]] = {n: [] for n in names}
        for i in range(_batch_len(inputs)):
            sample = _unsqueeze(_take_one(inputs, i))
            ll = _log_likelihood(output_fn(_forward(model, sample))[0], y[i], ignore_index)
            grads = torch.autograd.grad(ll, tensors, allow_unused=True)
            for n, g, p in zip(names, grads, tensors, strict=True):
                out[n].append(torch.zeros_like(p) if g is None else g)
        return {n: torch.stack(v) for n, v in out.items()}

    mode = per_sample
    seen = 0
    with eval_mode(model):
        for batch in data:
            inputs = input_fn(batch)
            n = _batch_len(inputs)
            if max_samples is not None:
                n = min(n, max_samples - seen)
                inputs = _take(inputs, n)
            if labels == "true":
                y = _take(target_fn(batch), n)
            else:
                with torch.no_grad():
                    logits = output_fn(call_with_state(model, (weights, fixed), inputs)).float()
                probs = torch.softmax(logits, dim=-1).reshape(-1, logits.shape[-1])
                draws = torch.multinomial(probs.cpu(), 1, generator=generator)
                y = draws.reshape(logits.shape[:-1]).to(logits.device)
            if mode == "loop":
                with torch.enable_grad():
                    grads = looped(inputs, y)
            else:
                try:
                    grads = vmapped(weights, inputs, y)
                except RuntimeError as err:
                    if mode == "vmap":
                        raise
                    warnings.warn(
                        f"per_sample_fisher: the model cannot be vmapped ({err}); using exact "
                        "per-sample gradients one sample at a time (per_sample='loop').",
                        stacklevel=2,
                    )
                    mode = "loop"
                    with torch.enable_grad():
                        grads = looped(inputs, y)
            for name, g in grads.items():
                # detach: parameters outside `params` that still require grad (a head left
                # out by `include`) would otherwise keep the whole graph alive in the Fisher.
                total[name] += g.detach().float().pow(2).sum(0)
            seen += n
            if max_samples is not None and seen >= max_samples:
                break
    if seen == 0:
        raise ValueError(
            "per_sample_fisher: data yielded no samples; pass the finished task's data."
        )
    return {name: t / seen for name, t in total.items()}


@register("ewc")
class EWC(ContinualRegularizer):
    """EWC penalty with a Fisher from exact per-sample gradients.

    Args:
        lambda_: Penalty strength ``lambda`` in ``(lambda/2) sum F (theta - theta*)^2``.
        mode: ``"offline"`` (one term per task) or ``"online"`` (one decayed term).
        gamma: Online decay of the old Fisher (``1.0``: plain accumulation).
        labels: ``"sampled"`` (true Fisher) or ``"true"`` (empirical Fisher).
        max_samples: Fisher from at most this many samples of each task (subsampling).
        include / exclude: Parameter-name patterns (see ``select_parameters``); default
            every trainable parameter at the time of the first ``update``.
        seed: Seeds the label sampling (task ``t`` uses ``seed + t``).
        chunk_size: Samples per ``vmap`` chunk while estimating.
        per_sample: ``"auto"`` / ``"vmap"`` / ``"loop"``, see :func:`per_sample_fisher`.
        input_fn / target_fn / output_fn: Pick inputs and labels out of a batch, logits
            out of a model output.
        fisher_fn: The Fisher estimator for models whose output is not a categorical
            distribution (a regression policy): called as ``fisher_fn(model, data, params,
            generator)`` and returning ``{name: F}`` for ``params``; ``labels``,
            ``max_samples``, ``chunk_size``, ``per_sample`` and the three ``*_fn`` pickers
            are then the estimator's business. Default: :func:`per_sample_fisher`.
        name: Logged name (default the class name).
    """

    def __init__(
        self,
        lambda_: float = 1.0,
        mode: Literal["offline", "online"] = "offline",
        gamma: float = 1.0,
        labels: LabelChoice = "sampled",
        max_samples: int | None = None,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        seed: int = 0,
        chunk_size: int | None = 64,
        per_sample: PerSample = "auto",
        input_fn: Callable[[Any], Any] = default_inputs,
        target_fn: Callable[[Any], Tensor] = default_targets,
        output_fn: Callable[[Any], Tensor] = default_logits,
        fisher_fn: FisherFn | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if mode not in ("offline", "online"):
            raise ValueError(f"EWC mode={mode!r} must be 'offline' or 'online'.")
        if lambda_ < 0:
            raise ValueError(f"EWC lambda_={lambda_} must be >= 0.")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"EWC gamma={gamma} must lie in [0, 1].")
        _check_labels(labels)
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"EWC max_samples={max_samples} must be >= 1 or None.")
        self.lambda_ = float(lambda_)
        self.mode = mode
        self.gamma = float(gamma)
        self.labels = labels
        self.max_samples = max_samples
        self.include = include
        self.exclude = list(exclude or [])
        self.seed = seed
        self.chunk_size = chunk_size
        self.per_sample = per_sample
        self.input_fn, self.target_fn, self.output_fn = input_fn, target_fn, output_fn
        self.fisher_fn = fisher_fn
        # Keys "<term>/<parameter name>": one term per task offline, term 0 online.
        self.fisher = TensorStore()
        self.anchor = TensorStore()

    # -------------------------------------------------------------------------- state
    def terms(self) -> list[int]:
        """Indices of the stored (Fisher, anchor) terms."""
        return sorted({int(k.split("/", 1)[0]) for k in self.fisher})

    def fisher_of(self, term: int = -1) -> dict[str, Tensor]:
        """The Fisher of one stored term (default the newest), by parameter name."""
        self.require_ready("fisher_of()")
        t = self.terms()[term]
        return {k.split("/", 1)[1]: v for k, v in self.fisher.items() if k.startswith(f"{t}/")}

    def _update(self, model: nn.Module, data: Iterable[Any] | None, task: Any) -> None:
        if data is None:
            raise ValueError(
                f"{self.name}.update(model, data) needs data: the finished task's batches "
                "(e.g. its train DataLoader) to estimate the Fisher on."
            )
        params = self._parameters_of(model)
        generator = torch.Generator().manual_seed(self.seed + int(self.num_updates.item()))
        if self.fisher_fn is not None:
            new = self._custom_fisher(model, data, params, generator)
        else:
            new = per_sample_fisher(
                model,
                data,
                self.labels,
                params=params,
                max_samples=self.max_samples,
                generator=generator,
                input_fn=self.input_fn,
                target_fn=self.target_fn,
                output_fn=self.output_fn,
                chunk_size=self.chunk_size,
                per_sample=self.per_sample,
            )
        with torch.no_grad():
            if self.mode == "offline":
                term = len(self.terms())
                for name, value in new.items():
                    self.fisher[f"{term}/{name}"] = value
                    self.anchor[f"{term}/{name}"] = params[name].detach().clone()
            else:
                for name, value in new.items():
                    key = f"0/{name}"
                    old = self.fisher[key] if key in self.fisher else torch.zeros_like(value)
                    self.fisher[key] = self.gamma * old + value
                    self.anchor[key] = params[name].detach().clone()

    def _custom_fisher(
        self,
        model: nn.Module,
        data: Iterable[Any],
        params: dict[str, nn.Parameter],
        generator: torch.Generator,
    ) -> dict[str, Tensor]:
        """``fisher_fn``'s estimate, checked: one tensor per parameter, of its shape."""
        assert self.fisher_fn is not None
        new = dict(self.fisher_fn(model, data, params, generator))
        missing = sorted(set(params) - set(new))
        if missing:
            raise ValueError(
                f"{self.name}: fisher_fn returned no Fisher for {missing[:5]}; it must return "
                "one tensor per parameter it is given."
            )
        for name, value in new.items():
            if name in params and tuple(value.shape) != tuple(params[name].shape):
                raise ValueError(
                    f"{self.name}: fisher_fn's Fisher for {name!r} has shape "
                    f"{tuple(value.shape)}, the parameter {tuple(params[name].shape)}."
                )
        return {n: new[n].detach().float() for n in params}

    def _parameters_of(self, model: nn.Module) -> dict[str, nn.Parameter]:
        if self.ready:  # later tasks protect the same parameters as the first one did
            names = {k.split("/", 1)[1] for k in self.fisher}
            available = dict(model.named_parameters())
            missing = sorted(names - set(available))
            if missing:
                raise KeyError(
                    f"{self.name}: parameters {missing[:5]} of earlier tasks are not in the "
                    "model; pass the same model to every update()."
                )
            return {n: available[n] for n in names}
        params = select_parameters(model, self.include, self.exclude)
        if not params:
            raise ValueError(
                f"{self.name}: no trainable parameter matches include={self.include} / "
                f"exclude={self.exclude}."
            )
        return params

    # -------------------------------------------------------------------------- penalty
    def _penalty(self, model: nn.Module) -> Tensor:
        current = dict(model.named_parameters())
        total: Tensor | None = None
        for key, fisher in self.fisher.items():
            name = key.split("/", 1)[1]
            if name not in current:
                raise KeyError(
                    f"{self.name}: parameter {name!r} has a Fisher but is not in the model "
                    "given to penalty(); pass the same model as to update()."
                )
            diff = current[name] - self.anchor[key]
            term = (fisher * diff.pow(2)).sum()
            total = term if total is None else total + term
        assert total is not None
        return 0.5 * self.lambda_ * total


@register("online_ewc")
class OnlineEWC(EWC):
    """Online EWC: one Fisher term decayed by ``gamma`` at each task (Schwarz et al., 2018)."""

    def __init__(self, lambda_: float = 1.0, gamma: float = 0.9, **kwargs: Any) -> None:
        if kwargs.pop("mode", "online") != "online":
            raise ValueError("OnlineEWC is EWC with mode='online'; use EWC for mode='offline'.")
        super().__init__(lambda_=lambda_, mode="online", gamma=gamma, **kwargs)
