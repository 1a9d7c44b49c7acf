"""The code app's test results as report sections (report.md's content)."""

from __future__ import annotations

import json
import math

import pytest

from apps.code.report import base_summary, forgetting, report_sections


def test_sections_show_every_measured_part_in_order(tmp_path):
    results = {
        "base": {"folder": "/cache/base-1", "params": 1328256, "tokens_seen": 819200,
                 "seconds": 155.9, "held_out_loss": 5.5513},
        "task_loss": {"fim": {"base": 5.5, "tuned": 5.25}, "chat": {"tuned": 4.0}},
        "forgetting": forgetting(5.0, 5.1),
        "humaneval": {"tuned": {"pass@1": 0.25, "problems": 2, "statuses": {"failed": 4}},
                      "base": {"pass@1": 0.0, "problems": 2}},
    }  # fmt: skip
    sections = report_sections(results)
    assert list(sections) == [
        "Base model",
        "Per-task loss on held-out modules (test split)",
        "Forgetting: perplexity on held-out plain library code",
        "humaneval",
    ]
    assert sections["Base model"] == (
        "Base: `/cache/base-1` (1,328,256 parameters, pre-trained on 819,200 tokens in 156 s; "
        "held-out loss 5.551 nats/token)."
    )
    rows = sections["Per-task loss on held-out modules (test split)"].splitlines()
    assert rows[2:] == ["| fim | 5.5000 | 5.2500 | -0.2500 |", "| chat | n/a | 4.0000 | n/a |"]
    ratio = math.exp(5.1) / math.exp(5.0)
    assert (
        f"| {math.exp(5.0):.4f} | {math.exp(5.1):.4f} | {ratio:.4f} |"
        in sections["Forgetting: perplexity on held-out plain library code"]
    )
    humaneval = sections["humaneval"].splitlines()
    assert humaneval[2:] == ["| pass@1 | 0.0000 | 0.2500 |", "| problems | 2 | 2 |"]
    assert report_sections({}) == {}


def test_forgetting_without_a_base_and_base_summary(tmp_path):
    lost = forgetting(math.nan, 5.0)
    assert math.isnan(lost["ratio"]) and math.isnan(lost["base_ppl"])
    assert lost["tuned_ppl"] == pytest.approx(math.exp(5.0))
    assert base_summary(tmp_path) is None  # model.pretrained: not pre-trained here
    stats = {"params": 10, "tokens_seen": 20, "held_out_loss": 5.0, "seconds": 1.0, "curve": []}
    (tmp_path / "pretrain.json").write_text(json.dumps(stats))
    assert base_summary(tmp_path) == {
        "folder": str(tmp_path), "params": 10, "tokens_seen": 20, "held_out_loss": 5.0,
        "seconds": 1.0,
    }  # fmt: skip
