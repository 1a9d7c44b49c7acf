import torch

from apps.vision.report import add_robustness, format_table, wiseft_table
from apps.vision.robust import RobustnessResult
from core.training import TestReport


def _row(name, id_, ood, **extra):
    acc = {"id_val": id_, "id_test": id_, "rot": ood, "flip": ood}
    ece = dict.fromkeys(acc, 0.1)
    return {"name": name, "acc": acc, "ece": ece, "id": id_, "id_val": id_, "ood": ood,
            "ece_id": 0.1, "ece_ood": 0.2, "method": "ft", **extra}  # fmt: skip


def _result(alphas=(0.0, 0.5, 1.0)):
    curve = [_row(f"wiseft_{a:.1f}", 0.5 + 0.4 * a, 0.4 + 0.1 * a, alpha=a) for a in alphas]
    rows = [_row("zeroshot", 0.5, 0.4), _row("ft", 0.9, 0.5), *curve]
    best = max(alphas, default=None)
    if curve:
        rows.append({**curve[-1], "name": "wiseft_chosen"})
    probs = torch.full((4, 2), 0.5)
    calibration = {"zero-shot (ID)": (probs, torch.zeros(4, dtype=torch.long))}
    return RobustnessResult("ft", rows, curve, best, ["rot", "flip"], calibration)


def test_tables_hold_every_model_shift_and_alpha():
    result = _result()
    table = format_table(result.summary_rows(), result.shifts)
    lines = table.splitlines()
    assert lines[0] == "| model | ID | OOD avg | rot | flip | ECE ID | ECE OOD |"
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| zeroshot", "| ft", "| wiseft_chosen"]
    assert "| ft | 0.900 | 0.500 | 0.500 | 0.500 | 0.100 | 0.200 |" in lines
    sweep = wiseft_table(result.curve, 1.0).splitlines()
    assert sweep[2] == "| 0.0 | 0.500 | 0.500 | 0.400 |"
    assert sweep[-1] == "| 1.0 (chosen) | 0.900 | 0.900 | 0.500 |"


def test_report_sections_and_figures():
    report = add_robustness(TestReport("t", {"Metrics": "m"}), _result())
    assert list(report.sections) == ["Metrics", "ID / OOD accuracy", "WiSE-FT", "Calibration"]
    assert "alpha chosen on ID validation accuracy: 1.0" in report.sections["WiSE-FT"]
    assert "mean over 2 shifts" in report.sections["ID / OOD accuracy"]
    assert set(report.figures) == {"frontier", "reliability"}
    # the frontier marks the zero-shot and the fine-tuned model, with the WiSE-FT curve
    labels = report.figures["frontier"].axes[0].get_legend_handles_labels()[1]
    assert labels == ["WiSE-FT (alpha 0..1)", "zeroshot", "ft"]
    # without a sweep there is no WiSE-FT section
    bare = add_robustness(TestReport("t"), _result(alphas=()))
    assert "WiSE-FT" not in bare.sections
    assert (
        "WiSE-FT (alpha 0..1)"
        not in bare.figures["frontier"].axes[0].get_legend_handles_labels()[1]
    )
