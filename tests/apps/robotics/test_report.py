import pytest
from PIL import Image

from apps.robotics.evaluation import ExpertPolicy, evaluate
from apps.robotics.intervals import SuccessSummary
from apps.robotics.report import (
    add_evaluation,
    plot_success_vs_demos,
    success_vs_demos_figure,
    write_report,
)


@pytest.fixture(scope="module")
def results():
    return evaluate(
        ExpertPolicy(), num_episodes=4, num_envs=4, record_frames=2, hz_steps=2, progress=False
    )


def summary(successes, trials=30):
    return SuccessSummary(successes, trials, mean_steps=60.0, mean_success_steps=40.0)


def test_write_report(tmp_path, results):
    points = [(20, summary(6)), (80, summary(18)), (80, summary(20))]
    path = write_report(
        results, tmp_path, extra={"Training": "80 demos, 5 minutes"}, success_vs_demos=points
    )
    assert path == tmp_path / "report.md"
    text = path.read_text()
    for heading in (
        "## Summary",
        "## Success by instruction condition",
        "## Success by task family",
        "## Baselines",
        "## Policy speed",
        "## Acceptance",
        "## Rollouts",
        "## Success vs demonstrations",
        "## Training",
    ):
        assert heading in text, heading
    for word in ("trained", "paraphrase", "blank", "scripted expert", "random actions"):
        assert word in text
    assert "| trained | 1.00 | 0.51–1.00 | 4/4 |" in text  # rate, Wilson interval, n
    assert "- PASS: trained success" in text
    assert "![success_vs_demos](success_vs_demos.png)" in text
    assert text.count("## Figures") == 0  # the figure is placed in its section
    gifs = sorted(p.name for p in tmp_path.glob("*.gif"))
    assert len(gifs) == 6  # 2 recorded episodes x 3 conditions
    assert all(f"({name})" in text for name in gifs)
    assert any("_blank.gif" in name for name in gifs)
    with Image.open(tmp_path / "success_vs_demos.png") as png:
        assert png.format == "PNG" and png.size[0] > 200
    assert not list(tmp_path.glob(".*"))  # no temporaries left


def test_report_without_gifs_or_demos(tmp_path, results):
    path = write_report(results, tmp_path, gif_episodes=0)
    text = path.read_text()
    assert "## Rollouts" not in text and "success_vs_demos" not in text
    assert not list(tmp_path.glob("*.gif")) and not list(tmp_path.glob("*.png"))


def test_add_evaluation_to_a_core_report(results):
    from core.training.report import TestReport

    report = TestReport(title="run", sections={"Metrics": "| metric | value |"})
    add_evaluation(report, results, success_vs_demos=[(10, summary(3))])
    names = list(report.sections)
    assert names[0] == "Summary" and names[-1] == "Metrics"
    assert "success_vs_demos" in report.figures


def test_plot_success_vs_demos(tmp_path):
    series = {
        "pretrained": [(20, summary(9)), (80, summary(21))],
        "random init": [(20, summary(2)), (80, summary(8))],
    }
    path = plot_success_vs_demos(series, tmp_path / "curve.png", title="towers")
    with Image.open(path) as png:
        assert png.format == "PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["curve.png"]
    with pytest.raises(ValueError, match="SuccessSummary"):
        success_vs_demos_figure([(20, 0.5)])
    with pytest.raises(ValueError, match="at least one"):
        success_vs_demos_figure([])
