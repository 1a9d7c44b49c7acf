"""Evaluation under shift, WiSE-FT and model soups (weight space, via ``core.merging``).

- :func:`evaluate`: ID / per-shift accuracy and ECE of a model on a data module's
  evaluation sets, with class-subset projection for shifts that cover fewer classes.
- :func:`wise_ft_sweep`: ``core.merging.wise_ft`` at each alpha (default 0, 0.1, ..., 1),
  one checkpoint per alpha, alpha chosen on ID validation accuracy.
- :func:`soups`: ``core.merging.uniform_soup`` and ``greedy_soup_search`` (held-out score:
  ID validation accuracy) over fine-tuned state dicts of one starting model.
- :func:`evaluate_robustness`: what a run's test adds (:class:`RobustnessResult`): the
  zero-shot row, the fine-tuned row and the WiSE-FT rows between them;
  :func:`write_results` puts them into the run directory (``results.jsonl``,
  ``wiseft.json``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from core.atomic import atomic_write, atomic_write_text
from core.merging import greedy_soup_search, uniform_soup, wise_ft

from .data import EvalSet
from .metrics import ResultsDB, accuracy, expected_calibration_error, project_logits

__all__ = [
    "DEFAULT_ALPHAS",
    "RobustnessResult",
    "evaluate",
    "evaluate_robustness",
    "predict_sets",
    "soups",
    "wise_ft_sweep",
    "write_results",
]

DEFAULT_ALPHAS = [round(0.1 * i, 1) for i in range(11)]


@torch.no_grad()
def predict_sets(
    model: nn.Module, sets: Mapping[str, EvalSet], device: torch.device | str = "cpu"
) -> dict[str, tuple[Tensor, Tensor]]:
    """Logits and labels of ``model`` on every evaluation set (eval mode, restored after)."""
    was = model.training
    model.eval()
    out = {}
    for name, es in sets.items():
        logits, labels = [], []
        for x, y in es.loader:
            logits.append(model(x.float().to(device)).float().cpu())
            labels.append(y)
        out[name] = (torch.cat(logits), torch.cat(labels))
    model.train(was)
    return out


def summarize(
    preds: Mapping[str, tuple[Tensor, Tensor]], sets: Mapping[str, EvalSet], n_bins: int = 15
) -> dict[str, Any]:
    """Accuracy and ECE per set, plus ``id`` (ID test), ``id_val`` and ``ood`` (mean shift)."""
    row: dict[str, Any] = {"acc": {}, "ece": {}}
    for name, (logits, labels) in preds.items():
        classes = sets[name].classes
        row["acc"][name] = accuracy(logits, labels, classes)
        pl_, yl = project_logits(logits, labels, classes)
        row["ece"][name] = expected_calibration_error(pl_.softmax(-1), yl, n_bins)
    ood = [n for n, s in sets.items() if s.kind == "ood"]
    row["id"] = row["acc"].get("id_test")
    row["id_val"] = row["acc"].get("id_val")
    row["ood"] = sum(row["acc"][n] for n in ood) / len(ood) if ood else None
    row["ece_id"] = row["ece"].get("id_test")
    row["ece_ood"] = sum(row["ece"][n] for n in ood) / len(ood) if ood else None
    return row


def evaluate(
    model: nn.Module, sets: Mapping[str, EvalSet], device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """:func:`summarize` of :func:`predict_sets`."""
    return summarize(predict_sets(model, sets, device), sets)


def _load(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    model.load_state_dict(dict(state), strict=True)


def _changed_tensors(
    state: Mapping[str, Tensor], reference: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    return {
        k: v.contiguous()
        for k, v in state.items()
        if not (v.shape == reference[k].shape and torch.equal(v, reference[k]))
    }


def save_weights(path: str | Path, state: Mapping[str, Tensor]) -> Path:
    """Save tensors as safetensors, atomically."""
    from safetensors.torch import save_file

    return atomic_write(path, lambda tmp: save_file(dict(state), str(tmp)))


def wise_ft_sweep(
    model: nn.Module,
    zeroshot: Mapping[str, Tensor],
    finetuned: Mapping[str, Tensor],
    sets: Mapping[str, EvalSet],
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    out_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
) -> tuple[list[dict[str, Any]], float]:
    """Evaluate ``wise_ft(zeroshot, finetuned, alpha)`` for each alpha.

    With ``out_dir``, writes ``alpha_<a>.safetensors`` per alpha holding the tensors that
    differ from the zero-shot model (load them over it with ``strict=False``; the frozen
    rest is identical). Returns the rows (``alpha`` + :func:`summarize` fields) and the
    alpha with the best ID validation accuracy (ties: the smaller alpha). The model is left
    holding ``finetuned``.
    """
    if not alphas:
        raise ValueError("wise_ft_sweep needs at least one alpha.")
    rows = []
    for alpha in alphas:
        state = wise_ft(zeroshot, finetuned, alpha=float(alpha))
        _load(model, state)
        row = {"alpha": float(alpha), **evaluate(model, sets, device)}
        rows.append(row)
        if out_dir is not None:
            save_weights(
                Path(out_dir) / f"alpha_{alpha:.2f}.safetensors", _changed_tensors(state, zeroshot)
            )
    _load(model, finetuned)
    best = max(rows, key=lambda r: (r["id_val"], -r["alpha"]))
    return rows, best["alpha"]


def soups(
    model: nn.Module,
    states: Sequence[Mapping[str, Tensor]],
    val_set: EvalSet,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Uniform and greedy soups of ``states`` (held-out score: accuracy on ``val_set``).

    Returns ``{"uniform": state, "greedy": state, "ingredients": [...], "scores": [...]}``;
    the model is left holding the greedy soup.
    """

    def score(state: Mapping[str, Tensor]) -> float:
        _load(model, state)
        logits, labels = predict_sets(model, {"val": val_set}, device)["val"]
        return accuracy(logits, labels, val_set.classes)

    uniform = uniform_soup(states)
    greedy = greedy_soup_search(states, score)
    _load(model, greedy.state_dict)
    return {
        "uniform": uniform,
        "greedy": greedy.state_dict,
        "ingredients": greedy.ingredients,
        "scores": greedy.scores,
        "greedy_val": greedy.soup_score,
    }


def clone_state(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of ``model``'s state dict (weights that later changes leave alone)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass
class RobustnessResult:
    """Zero-shot vs fine-tuned vs WiSE-FT on ID and every shift: what a test run reports.

    Attributes:
        method: Name of the fine-tuning method (the ``method`` of every row).
        rows: ``zeroshot``, ``<method>``, then (with a sweep) ``wiseft_<alpha>`` per alpha
            and ``wiseft_chosen``; each row holds the :func:`summarize` fields.
        curve: The WiSE-FT rows (``alpha`` + :func:`summarize` fields) in alpha order.
        best_alpha: The alpha chosen on ID validation accuracy (``None``: no sweep).
        shifts: Names of the OOD sets.
        calibration: ``{model: (probs, labels)}`` on ID test, for reliability diagrams.
    """

    method: str
    rows: list[dict[str, Any]]
    curve: list[dict[str, Any]] = field(default_factory=list)
    best_alpha: float | None = None
    shifts: list[str] = field(default_factory=list)
    calibration: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)

    def summary_rows(self) -> list[dict[str, Any]]:
        """The rows without the per-alpha ones: zero-shot, the method, WiSE-FT's choice."""
        return [r for r in self.rows if not r["name"].startswith(("wiseft_0", "wiseft_1"))]


def evaluate_robustness(
    model: nn.Module,
    zeroshot: Mapping[str, Tensor],
    sets: Mapping[str, EvalSet],
    method: str = "finetuned",
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    wiseft_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
) -> RobustnessResult:
    """Score the zero-shot weights, ``model``'s weights and the WiSE-FT sweep between them.

    ``model`` holds the fine-tuned weights and holds them again afterwards; ``zeroshot`` is
    the state dict it started from. With ``alphas`` empty there is no sweep; with
    ``wiseft_dir`` each alpha's weights are saved there (:func:`wise_ft_sweep`).
    """
    finetuned = clone_state(model)
    _load(model, zeroshot)
    zs_preds = predict_sets(model, sets, device)
    _load(model, finetuned)
    ft_preds = predict_sets(model, sets, device)
    rows = [
        {"name": "zeroshot", **summarize(zs_preds, sets)},
        {"name": method, **summarize(ft_preds, sets)},
    ]
    curve: list[dict[str, Any]] = []
    best_alpha = None
    if alphas:
        curve, best_alpha = wise_ft_sweep(
            model, zeroshot, finetuned, sets, alphas, wiseft_dir, device
        )
        rows += [{"name": f"wiseft_{r['alpha']:.1f}", **r} for r in curve]
        chosen = next(r for r in curve if r["alpha"] == best_alpha)
        rows.append({"name": "wiseft_chosen", **chosen})
    for r in rows:
        r["method"] = method
    calibration = {
        "zero-shot (ID)": (zs_preds["id_test"][0].softmax(-1), zs_preds["id_test"][1]),
        f"{method} (ID)": (ft_preds["id_test"][0].softmax(-1), ft_preds["id_test"][1]),
    }
    shifts = [n for n, s in sets.items() if s.kind == "ood"]
    return RobustnessResult(method, rows, curve, best_alpha, shifts, calibration)


def write_results(result: RobustnessResult, run_dir: str | Path) -> list[Path]:
    """Append the rows to ``results.jsonl`` and, after a sweep, write ``wiseft.json``.

    Returns the files written (each atomically).
    """
    run_dir = Path(run_dir)
    db = ResultsDB(run_dir / "results.jsonl")
    db.append(result.rows)
    written = [db.path]
    if result.best_alpha is not None:
        written.append(
            atomic_write_text(
                run_dir / "wiseft.json",
                f'{{"chosen_alpha": {result.best_alpha}, "criterion": "id_val accuracy"}}\n',
            )
        )
    return written
