"""Heat map of R: a PNG, partial matrices drawn, nothing half-written."""

from __future__ import annotations

import pytest

from core.continual import plot_accuracy_matrix


def test_png_is_written_for_full_and_partial_matrices(tmp_path) -> None:
    names = ["a", "b", "c"]
    full = plot_accuracy_matrix(
        [[0.9, 0.1, 0.1], [0.5, 0.8, 0.2], [0.4, 0.6, 0.9]], names, tmp_path / "f.png"
    )
    partial = plot_accuracy_matrix([[0.9, 0.1, float("nan")]], names, tmp_path / "p.png")
    for path in (full, partial):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "p.png"]  # no temp files


def test_names_must_match_columns(tmp_path) -> None:
    with pytest.raises(ValueError, match="one name per column"):
        plot_accuracy_matrix([[0.5, 0.5]], ["only"], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
