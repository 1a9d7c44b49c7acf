"""Pseudo-label files, the data module training on them, and the noisy-student pipeline on a
tiny teacher and student."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from apps.speech_asr.pseudo_labels import (
    read_pseudo_labels,
    with_pseudo_labels,
    write_pseudo_labels,
)
from apps.speech_asr.utterance import Utterance

from .conftest import TINY
from .tiny_whisper import write_tiny_whisper


def test_pseudo_label_file_round_trip_and_normalised_text(tmp_path) -> None:
    path = write_pseudo_labels(tmp_path / "p.json", {"lt-train-00004": "Labas, Rytas!"}, "t")
    assert read_pseudo_labels(path, {"lt": 4, "is": 2}) == {"lt": {4: "labas rytas"}}


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ({"lt-train-00001": "x"}, "one of the 4 labelled lt utterances"),
        ({"de-train-00009": "x"}, "'de' is not one of data.languages"),
        ({"lt-dev-00009": "x"}, "ids are '<language>-train-<index>'"),
    ],
)
def test_pseudo_labels_for_the_wrong_utterances_are_refused(tmp_path, texts, message) -> None:
    path = write_pseudo_labels(tmp_path / "p.json", texts, "t")
    with pytest.raises(ValueError, match=re.escape(message)):
        read_pseudo_labels(path, {"lt": 4})


def test_unreadable_or_missing_pseudo_label_files_are_named(tmp_path) -> None:
    (tmp_path / "bad.json").write_text('{"texts": 3}')
    with pytest.raises(ValueError, match=r"bad\.json is not a pseudo-label file"):
        read_pseudo_labels(tmp_path / "bad.json", {"lt": 4})
    with pytest.raises(FileNotFoundError, match=r"missing\.json does not exist"):
        read_pseudo_labels(tmp_path / "missing.json", {"lt": 4})


def test_pseudo_labels_replace_the_texts_after_the_labelled_ones() -> None:
    rows = [Utterance(id=f"lt-train-{i:05d}", language="lt", text=f"true {i}") for i in range(5)]
    out = with_pseudo_labels(rows, 2, {2: "guess two", 4: "guess four", 3: ""})
    assert [u.text for u in out] == ["true 0", "true 1", "guess two", "guess four"]


def test_data_module_trains_on_the_pseudo_labelled_utterances(tmp_path) -> None:
    from apps.speech_asr.data import SpeechDataModule

    path = write_pseudo_labels(
        tmp_path / "p.json", {"lt-train-00002": "namas", "lt-train-00004": "labas"}, "t"
    )
    data = SpeechDataModule(
        languages=["lt"], head_languages=[], train_utterances={"lt": 2}, pseudo_labels=str(path)
    )
    train = data.utterances("train")
    assert [u.id for u in train] == ["lt-train-00000", "lt-train-00001", "lt-train-00002",
                                     "lt-train-00004"]  # fmt: skip
    assert [u.text for u in train[2:]] == ["namas", "labas"]
    with pytest.raises(ValueError, match=r"data\.source: embedded"):
        SpeechDataModule(source="jsonl", root=str(tmp_path), pseudo_labels=str(path))


def test_noisy_student_pipeline_on_tiny_models(tmp_path) -> None:
    from apps.speech_asr import noisy_student

    teacher = write_tiny_whisper(tmp_path / "tiny_whisper")
    teacher_options = (
        f"--model.pretrained {teacher} --trainer.max_steps 1 --trainer.limit_val_batches 1 "
        "--trainer.limit_test_batches 1 --trainer.enable_progress_bar false "
        "--model.max_new_tokens 3 --model.num_beams 1 --data.dev_utterances 2 "
        "--data.test_utterances 2 --data.head_languages [de]"
    )
    summary = noisy_student.run(
        ["--labelled", "2", "--unlabelled", "2", "--seeds", "0", "--out", str(tmp_path / "ns"),
         "--teacher-options", teacher_options, "--config", str(TINY)]
    )  # fmt: skip
    state = json.loads((tmp_path / "ns" / "results.json").read_text())
    assert [r["kind"] for r in state["records"]] == ["teacher", "labelled", "noisy"]
    texts = json.loads((tmp_path / "ns" / "pseudo_labels.json").read_text())["texts"]
    assert sorted(texts) == [f"{c}-train-0000{i}" for c in ("is", "lt", "lv", "sl") for i in (2, 3)]
    assert set(state["pseudo_label_quality"]) == {"lt", "lv", "sl", "is"}
    text = summary.read_text()
    assert "noisy student: labelled + pseudo-labelled" in text and "pseudo-labels" in text
    assert Path(tmp_path / "ns" / "cer_per_language.png").is_file()


def test_noisy_student_reuses_a_finished_teacher_run(tmp_path) -> None:
    from apps.speech_asr import noisy_student
    from apps.speech_asr.train import CONFIG_DIR, main

    teacher = write_tiny_whisper(tmp_path / "tiny_whisper")

    cli = main(
        ["--config", str(CONFIG_DIR / "whisper.yaml"), "--model.pretrained", str(teacher),
         "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1",
         "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false",
         "--model.max_new_tokens", "3", "--model.num_beams", "1", "--data.dev_utterances", "2",
         "--data.test_utterances", "2", "--data.head_languages", "[de]",
         "--data.train_utterances", "{lt: 2, lv: 2, sl: 2, is: 2}",
         "--trainer.default_root_dir", str(tmp_path / "teacher")]
    )  # fmt: skip
    noisy_student.run(
        ["--labelled", "2", "--unlabelled", "1", "--seeds", "0", "--out", str(tmp_path / "ns"),
         "--teacher", cli.trainer.log_dir, "--config", str(TINY)]
    )  # fmt: skip
    state = json.loads((tmp_path / "ns" / "results.json").read_text())
    assert state["records"][0]["run_dir"] == cli.trainer.log_dir
    texts = json.loads((tmp_path / "ns" / "pseudo_labels.json").read_text())["texts"]
    assert sorted(texts) == [f"{c}-train-00002" for c in ("is", "lt", "lv", "sl")]
    with pytest.raises(FileNotFoundError, match="finished run of the Whisper recipe"):
        noisy_student.run(["--teacher", str(tmp_path), "--out", str(tmp_path / "ns3")])
