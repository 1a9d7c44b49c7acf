"""Evaluation under shift, WiSE-FT and model soups (weight space, via ``core.merging``).

- :func:`evaluate`: ID / per-shift accuracy and ECE of a model on a data module's
  evaluation sets, with class-subset projection for shifts that cover fewer classes.
- :func:`wise_ft_sweep`: ``core.merging.wise_ft`` at each alpha (default 0, 0.1, ..., 1),
  one checkpoint per alpha, alpha chosen on ID validation accuracy.
- :func:`soups`: ``core.merging.uniform_soup`` and ``greedy_soup_search`` (held-out score:
  ID validation accuracy) over fine-tuned state dicts of one starting model.
- :class:`RobustnessReport`: a Lightning callback that runs all of it when fitting ends
  (zero-shot row, fine-tuned row, WiSE-FT rows), writes ``results.jsonl``, ``wiseft/``,
  ``frontier.png``, ``reliability.png`` into the run directory and prints the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from core.atomic import atomic_write, atomic_write_text
from core.merging import greedy_soup_search, uniform_soup, wise_ft

from .data import EvalSet
from .metrics import (
    ResultsDB,
    accuracy,
    expected_calibration_error,
    plot_frontier,
    plot_reliability,
    project_logits,
)

__all__ = [
    "DEFAULT_ALPHAS",
    "RobustnessReport",
    "evaluate",
    "format_table",
    "predict_sets",
    "soups",
    "wise_ft_sweep",
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


def format_table(rows: Sequence[dict[str, Any]], shifts: Sequence[str]) -> str:
    """A Markdown table: model, ID, OOD average, each shift, ECE (ID / OOD)."""
    head = ["model", "ID", "OOD avg", *shifts, "ECE ID", "ECE OOD"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"], f"{r['id']:.3f}", f"{r['ood']:.3f}"]
        cells += [f"{r['acc'][s]:.3f}" for s in shifts]
        cells += [f"{r['ece_id']:.3f}", f"{r['ece_ood']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


class RobustnessReport(pl.Callback):
    """After ``fit``: zero-shot vs fine-tuned vs WiSE-FT on ID and every shift.

    Args:
        alphas: WiSE-FT mixing weights (default 0, 0.1, ..., 1); empty: no sweep.
        save_checkpoints: Write one ``wiseft/alpha_<a>.safetensors`` per alpha.
        method: Name of the fine-tuning method in the results rows.
        plots: Write ``frontier.png`` and ``reliability.png``.
        verbose: Print the table.

    The run directory gets ``results.jsonl`` (one row per model / alpha), ``wiseft.json``
    (the alpha chosen on ID validation) and the plots. The module must expose
    ``initial_state`` (the zero-shot weights), as :class:`apps.vision.module.VisionModule`
    does; the data module must have ``eval_sets()``.
    """

    def __init__(
        self,
        alphas: list[float] | None = None,
        save_checkpoints: bool = True,
        method: str = "finetuned",
        plots: bool = True,
        verbose: bool = True,
    ) -> None:
        self.alphas = DEFAULT_ALPHAS if alphas is None else list(alphas)
        self.save_checkpoints, self.method = save_checkpoints, method
        self.plots, self.verbose = plots, verbose
        self.rows: list[dict[str, Any]] = []
        self.best_alpha: float | None = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        initial = getattr(pl_module, "initial_state", None)
        if initial is None:
            raise AttributeError("RobustnessReport needs pl_module.initial_state (zero-shot).")
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        sets = trainer.datamodule.eval_sets()
        model, device = pl_module.model, pl_module.device
        finetuned = {k: v.detach().clone() for k, v in model.state_dict().items()}
        _load(model, initial)
        zs_preds = predict_sets(model, sets, device)
        _load(model, finetuned)
        ft_preds = predict_sets(model, sets, device)
        rows = [
            {"name": "zeroshot", **summarize(zs_preds, sets)},
            {"name": self.method, **summarize(ft_preds, sets)},
        ]
        curve: list[dict[str, Any]] = []
        if self.alphas:
            out = run_dir / "wiseft" if self.save_checkpoints else None
            curve, self.best_alpha = wise_ft_sweep(
                model, initial, finetuned, sets, self.alphas, out, device
            )
            for r in curve:
                rows.append({"name": f"wiseft_{r['alpha']:.1f}", **r})
            chosen = next(r for r in curve if r["alpha"] == self.best_alpha)
            rows.append({"name": "wiseft_chosen", **chosen})
            atomic_write_text(
                run_dir / "wiseft.json",
                f'{{"chosen_alpha": {self.best_alpha}, "criterion": "id_val accuracy"}}\n',
            )
        for r in rows:
            r["method"] = self.method
        self.rows = rows
        ResultsDB(run_dir / "results.jsonl").append(rows)
        shifts = [n for n, s in sets.items() if s.kind == "ood"]
        if self.plots:
            points = [{"name": r["name"], "id": r["id"], "ood": r["ood"]} for r in rows[:2]]
            plot_frontier(points, run_dir / "frontier.png", curve=curve)
            plot_reliability(
                {
                    "zero-shot (ID)": (zs_preds["id_test"][0].softmax(-1), zs_preds["id_test"][1]),
                    f"{self.method} (ID)": (
                        ft_preds["id_test"][0].softmax(-1),
                        ft_preds["id_test"][1],
                    ),
                },
                run_dir / "reliability.png",
            )
        if self.verbose:
            shown = [
                r
                for r in rows
                if not r["name"].startswith("wiseft_0") and not r["name"].startswith("wiseft_1")
            ]
            print(f"\nID / OOD accuracy (ID test; OOD = mean over {len(shifts)} shifts):")
            print(format_table(shown, shifts))
            if self.best_alpha is not None:
                print(f"WiSE-FT alpha chosen on ID validation: {self.best_alpha:.1f}")
            print(f"results: {run_dir / 'results.jsonl'}\n")
