import json
import logging

import numpy as np
import pytest
import soundfile as sf

from apps.speech_asr import audio
from apps.speech_asr.audio import AudioError, mp3_supported
from apps.speech_asr.formats import (
    FORMATS,
    language_code,
    load,
    read_common_voice,
    read_fleurs,
    read_jsonl,
    read_source,
)
from apps.speech_asr.text import normalize
from apps.speech_asr.utterance import SAMPLE_RATE, Utterance

CV_HEADER = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale"


@pytest.fixture(autouse=True)
def capture(caplog):
    audio._NOTICED.clear()
    caplog.set_level(logging.INFO, logger="apps.speech_asr")
    yield
    audio._NOTICED.clear()


def _clip(path, seconds=0.2, rate=SAMPLE_RATE, channels=1, value=0.1):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.full((int(rate * seconds), channels), value, dtype=np.float32)
    sf.write(path, data if channels > 1 else data[:, 0], rate)
    return path


def _write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _cv_row(client, clip, sentence, locale):
    return f"{client}\t{clip}\t{sentence}\t2\t0\t\t\t\t{locale}"


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# ---------------------------------------------------------------------------- Common Voice
def test_common_voice_reads_speakers_normalises_and_skips_bad_rows(tmp_path, caplog):
    root = tmp_path / "cv"
    for name in ("a.wav", "b.flac", "c.wav"):
        _clip(root / "clips" / name)
    _write(
        root / "train.tsv",
        [
            CV_HEADER,
            _cv_row("spk1", "a.wav", 'Labas rytas, "Jonai"!', "lt"),
            _cv_row("spk2", "b.flac", "Ačiū  labai.", "lt"),
            _cv_row("spk3", "missing.wav", "Kur esi?", "lt"),
            _cv_row("spk4", "c.wav", "", "lt"),
        ],
    )
    utts = read_common_voice(root, "train")
    assert [u.id for u in utts] == ["a", "b"]
    assert [u.speaker for u in utts] == ["spk1", "spk2"]
    assert [u.language for u in utts] == ["lt", "lt"]
    assert utts[0].text == normalize('Labas rytas, "Jonai"!', "lt") == "labas rytas jonai"
    assert utts[1].text == normalize("Ačiū  labai.", "lt")
    assert utts[0].audio is None and utts[0].path == str(root / "clips" / "a.wav")
    (warning,) = _warnings(caplog)
    assert "skipped 2 of 4 rows" in warning
    assert "1 audio file missing" in warning and "missing.wav" in warning
    assert "1 empty transcript" in warning and "train.tsv:5" in warning


def test_common_voice_language_from_locale_argument_or_folder(tmp_path):
    no_locale = "client_id\tpath\tsentence"
    for folder in ("sl", "corpus"):
        _clip(tmp_path / folder / "clips" / "x.wav")
        _write(tmp_path / folder / "dev.tsv", [no_locale, "s\tx.wav\tDober dan."])
    assert read_common_voice(tmp_path / "sl", "dev")[0].language == "sl"
    assert read_common_voice(tmp_path / "corpus", "dev", language="sl")[0].language == "sl"
    with pytest.raises(ValueError, match=r"no locale column .*pass language="):
        read_common_voice(tmp_path / "corpus", "dev")
    with pytest.raises(ValueError, match=r"language: .*'xx'"):
        read_common_voice(tmp_path / "corpus", "dev", language="xx")


def test_common_voice_unknown_locale_lists_the_known_codes(tmp_path):
    root = tmp_path / "cv"
    _clip(root / "clips" / "x.wav")
    _write(root / "test.tsv", [CV_HEADER, _cv_row("s", "x.wav", "hello", "xx")])
    with pytest.raises(ValueError, match=r"test\.tsv:2: locale: .*'xx'") as err:
        read_common_voice(root, "test")
    assert all(code in str(err.value) for code in ("lt", "lv", "sl", "is", "es", "de"))


def test_common_voice_train_from_validated_leaves_out_dev_and_test(tmp_path):
    root = tmp_path / "lt"
    rows = [_cv_row(f"s{i}", f"{i}.wav", f"žodis {i}", "lt") for i in range(5)]
    for i in range(5):
        _clip(root / "clips" / f"{i}.wav")
    _write(root / "validated.tsv", [CV_HEADER, *rows])
    _write(root / "dev.tsv", [CV_HEADER, rows[1]])
    _write(root / "test.tsv", [CV_HEADER, rows[3]])
    assert [u.id for u in read_common_voice(root, "train")] == ["0", "2", "4"]
    assert [u.id for u in read_common_voice(root, "dev")] == ["1"]


def test_common_voice_release_folder_reads_the_languages_asked_for(tmp_path):
    for code, word in (("lt", "labas"), ("sl", "dober"), ("is", "góðan")):
        _clip(tmp_path / code / "clips" / f"{code}.wav")
        _write(tmp_path / code / "train.tsv", [CV_HEADER, _cv_row("s", f"{code}.wav", word, code)])
    (tmp_path / "notes").mkdir()
    got = read_source("common_voice", tmp_path, "train", languages=["lt", "is"])
    assert sorted(u.language for u in got) == ["is", "lt"]
    assert sorted(u.language for u in read_common_voice(tmp_path, "train")) == ["is", "lt", "sl"]
    with pytest.raises(ValueError, match=r"holds no dev\.tsv"):
        read_common_voice(tmp_path, "dev")


def test_common_voice_bad_files(tmp_path):
    root = tmp_path / "cv"
    _clip(root / "clips" / "x.wav")
    _write(root / "train.tsv", ["client_id\tclip\ttext", "s\tx.wav\thi"])
    with pytest.raises(ValueError, match=r"header .*missing \['path', 'sentence'\]"):
        read_common_voice(root, "train", language="lt")
    _write(root / "train.tsv", [CV_HEADER, "s\tx.wav"])
    with pytest.raises(ValueError, match=r"train\.tsv:2: 2 tab-separated fields"):
        read_common_voice(root, "train")
    _write(root / "train.tsv", [CV_HEADER, _cv_row("s", "x.wav", "!!!", "lt")])
    with pytest.raises(ValueError, match="no usable utterance among 1 rows"):
        read_common_voice(root, "train")
    with pytest.raises(ValueError, match="does not exist"):
        read_common_voice(tmp_path / "nowhere", "train")


def test_common_voice_rows_of_other_languages_are_left_out(tmp_path, caplog):
    root = tmp_path / "cv"
    _clip(root / "clips" / "x.wav")
    _clip(root / "clips" / "y.wav")
    _write(
        root / "train.tsv",
        [CV_HEADER, _cv_row("a", "x.wav", "labas", "lt"), _cv_row("b", "y.wav", "sveiki", "lv")],
    )
    assert [u.language for u in read_common_voice(root, "train", languages=["lv"])] == ["lv"]
    assert any("not asked for" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match=r"no usable utterance in languages \['is'\]"):
        read_common_voice(root, "train", languages=["is"])
    with pytest.raises(ValueError, match=r"languages: .*'klingon'"):
        read_common_voice(root, "train", languages=["klingon"])


# ---------------------------------------------------------------------------- FLEURS
def _fleurs_row(i, file_name, raw, norm):
    return f"{i}\t{file_name}\t{raw}\t{norm}\tl a b a s |\t{3200}\tFEMALE"


def test_fleurs_one_language_folder(tmp_path, caplog):
    root = tmp_path / "lithuanian"
    _clip(root / "audio" / "test" / "1.wav")
    _clip(root / "audio" / "test" / "2.wav")
    _clip(root / "audio" / "test" / "4.wav")
    _write(
        root / "test.tsv",
        [
            _fleurs_row(7, "1.wav", "Labas, pasauli!", "labas pasauli"),
            _fleurs_row(7, "2.wav", "", "ačiū"),  # raw empty: FLEURS' own column is used
            _fleurs_row(8, "3.wav", "Nėra", "nėra"),  # no audio file
            _fleurs_row(9, "4.wav", "", ""),
        ],
    )
    with pytest.raises(ValueError, match=r"language of .*lithuanian is unknown .*; pass language="):
        read_fleurs(root, "test")
    utts = read_fleurs(root, "test", language="lt")
    assert [(u.id, u.text, u.language) for u in utts] == [
        ("lt_1", normalize("Labas, pasauli!", "lt"), "lt"),
        ("lt_2", "ačiū", "lt"),
    ]
    assert utts[0].path == str(root / "audio" / "test" / "1.wav")
    assert "skipped 2 of 4 rows" in _warnings(caplog)[0]


def test_fleurs_release_layout(tmp_path):
    for folder, raw in (("lt_lt", "Labas"), ("is_is", "Halló"), ("lv_lv", "Sveiki")):
        _clip(tmp_path / folder / "audio" / "dev" / "1.wav")
        _write(tmp_path / folder / "dev.tsv", [_fleurs_row(1, "1.wav", raw, raw.lower())])
    got = read_source("fleurs", tmp_path, "dev", languages=["is", "lv"])
    assert [(u.id, u.language) for u in got] == [("is_1", "is"), ("lv_1", "lv")]
    lt = read_fleurs(tmp_path / "lt_lt", "dev")  # the folder's name says the language
    assert lt[0].language == "lt"
    _write(tmp_path / "lt_lt" / "dev.tsv", ["1\t1.wav"])
    with pytest.raises(ValueError, match=r"dev\.tsv:1: 2 tab-separated fields"):
        read_fleurs(tmp_path / "lt_lt", "dev")
    with pytest.raises(ValueError, match=r"holds no train\.tsv"):
        read_fleurs(tmp_path, "train")


# ---------------------------------------------------------------------------- JSONL
def _jsonl(path, rows):
    return _write(path, [json.dumps(r, ensure_ascii=False) for r in rows])


def test_jsonl_manifest_with_splits(tmp_path, caplog):
    _clip(tmp_path / "data" / "a.wav")
    absolute = _clip(tmp_path / "elsewhere" / "b.flac")
    _clip(tmp_path / "data" / "c.wav")
    manifest = _jsonl(
        tmp_path / "data" / "all.jsonl",
        [
            {"audio": "a.wav", "text": "Góðan daginn.", "language": "is", "split": "train",
             "speaker": 17},
            {"audio": str(absolute), "text": "Dober dan", "language": "sl", "split": "train"},
            {"audio": "c.wav", "text": "Labas", "language": "lt", "split": "test"},
            {"audio": "gone.wav", "text": "Labas", "language": "lt", "split": "train"},
            {"audio": "c.wav", "text": "  ", "language": "lt", "split": "train"},
        ],
    )  # fmt: skip
    train = read_jsonl(manifest, "train")
    assert [(u.id, u.language, u.speaker) for u in train] == [
        ("a.wav", "is", "17"),
        (absolute.as_posix(), "sl", ""),
    ]
    assert train[0].text == normalize("Góðan daginn.", "is")
    assert train[0].path == str(tmp_path / "data" / "a.wav") and train[1].path == str(absolute)
    (warning,) = _warnings(caplog)
    assert "skipped 2 of 4 rows" in warning and "gone.wav" in warning
    assert [u.id for u in read_source("jsonl", manifest, "test")] == ["c.wav"]


def test_jsonl_folder_of_split_files(tmp_path):
    _clip(tmp_path / "clips" / "x.wav")
    _jsonl(tmp_path / "dev.jsonl", [{"audio": "clips/x.wav", "text": "Sveiki", "id": "u1"}])
    got = read_jsonl(tmp_path, "dev", language="lv")
    assert [(u.id, u.language, u.text) for u in got] == [("u1", "lv", normalize("Sveiki", "lv"))]
    with pytest.raises(ValueError, match=r"dev\.jsonl:1: no 'language'; add one"):
        read_jsonl(tmp_path, "dev")
    with pytest.raises(ValueError, match=r"holds no test\.jsonl"):
        read_jsonl(tmp_path, "test")
    _jsonl(tmp_path / "dev.jsonl", [{"audio": "clips/x.wav", "text": "a", "split": "train"}])
    with pytest.raises(ValueError, match=r"dev\.jsonl:1: the row says split 'train'"):
        read_jsonl(tmp_path, "dev", language="lv")


def test_jsonl_malformed_rows_name_the_line(tmp_path):
    _clip(tmp_path / "x.wav")
    cases = [
        ('{"audio": "x.wav", "text": "a", "language": "lt"}', r"no 'split'; give every row"),
        ('{"audio": "x.wav", "language": "lt", "split": "train"}', r"no \['text'\]"),
        ('{"audio": "x.wav", "text": "a", "language": "lt", "split": "train"', "not valid JSON"),
        ('["x.wav", "a"]', "must be a JSON object"),
        ('{"audio": 3, "text": "a", "language": "lt", "split": "train"}', "'audio' is int"),
        ('{"audio": "x.wav", "text": "a", "language": "zz", "split": "train"}', "'zz'"),
    ]
    for line, message in cases:
        manifest = _write(tmp_path / "m.jsonl", ["", line])
        with pytest.raises(ValueError, match=r"m\.jsonl:2: .*" + message):
            read_jsonl(manifest, "train")
    with pytest.raises(ValueError, match=r"not a \.jsonl manifest"):
        read_jsonl(tmp_path / "x.wav", "train")


def test_jsonl_with_nothing_left_is_an_error(tmp_path):
    manifest = _jsonl(
        tmp_path / "m.jsonl",
        [{"audio": "gone.wav", "text": "labas", "language": "lt", "split": "train"}],
    )
    with pytest.raises(ValueError, match=r"no usable utterance among 1 rows \(1 skipped"):
        read_jsonl(manifest, "train")


# ---------------------------------------------------------------------------- audio checks
def test_max_seconds_checks_every_header_before_decoding(tmp_path):
    _clip(tmp_path / "short.wav", seconds=0.5)
    _clip(tmp_path / "long.wav", seconds=3.0, rate=8000)
    (tmp_path / "broken.wav").write_bytes(b"not a wav file")
    rows = [
        {"audio": name, "text": "labas", "language": "lt", "split": "train"}
        for name in ("short.wav", "long.wav")
    ]
    manifest = _jsonl(tmp_path / "m.jsonl", rows)
    assert len(read_jsonl(manifest, "train")) == 2  # no limit: headers not read
    with pytest.raises(AudioError, match=r"long\.wav' is 3\.0 s long, over the 2 s limit"):
        read_source("jsonl", manifest, "train", max_seconds=2.0)
    assert len(read_source("jsonl", manifest, "train", max_seconds=3.0)) == 2
    rows.append({"audio": "broken.wav", "text": "labas", "language": "lt", "split": "train"})
    manifest = _jsonl(tmp_path / "m.jsonl", rows)
    with pytest.raises(AudioError, match=r"broken\.wav' cannot be decoded"):
        read_source("jsonl", manifest, "train", max_seconds=10.0)


def test_load_fills_the_audio_mono_16k(tmp_path, caplog):
    _clip(tmp_path / "clips" / "s.wav", seconds=0.5, rate=44100, channels=2, value=0.25)
    _write(tmp_path / "train.tsv", [CV_HEADER, _cv_row("s", "s.wav", "Labas", "lt")])
    (utt,) = read_common_voice(tmp_path, "train")
    loaded = load(utt)
    assert utt.audio is None  # the input is not modified
    assert loaded.audio.dtype == np.float32 and loaded.audio.shape == (SAMPLE_RATE // 2,)
    assert loaded.duration == pytest.approx(0.5)
    np.testing.assert_allclose(loaded.audio[2000:-2000], 0.25, atol=1e-3)
    assert (loaded.id, loaded.text, loaded.speaker) == (utt.id, utt.text, utt.speaker)
    assert load(loaded) is loaded
    messages = [r.getMessage() for r in caplog.records if r.name == "apps.speech_asr.audio"]
    assert any("mixed down" in m for m in messages) and any("44100 Hz" in m for m in messages)
    with pytest.raises(AudioError, match=r"over the 0\.1 s limit"):
        load(utt, max_seconds=0.1)
    with pytest.raises(ValueError, match="neither audio nor a path"):
        load(Utterance(id="u", language="lt", text="a"))


@pytest.mark.skipif(not mp3_supported(), reason="this libsndfile has no MP3 codec")
def test_common_voice_mp3_clips_load(tmp_path):
    root = tmp_path / "is"
    (root / "clips").mkdir(parents=True)
    t = np.arange(48000) / 48000
    sf.write(root / "clips" / "x.mp3", (0.3 * np.sin(2 * np.pi * 300 * t)), 48000, format="MP3")
    _write(root / "test.tsv", [CV_HEADER, _cv_row("s", "x.mp3", "Já", "is")])
    (utt,) = read_common_voice(root, "test", max_seconds=5.0)
    assert abs(load(utt).duration - 1.0) < 0.05


def test_source_names_and_language_codes():
    assert FORMATS == ("common_voice", "fleurs", "jsonl")
    with pytest.raises(ValueError, match=r"unknown source 'kaldi'; .*'common_voice'"):
        read_source("kaldi", ".", "train")
    assert language_code("sl", "x") == "sl"
    assert language_code("lt_lt", "x") == "lt"  # a FLEURS folder
    assert language_code("es_419", "x") == "es"
    assert language_code("sv-SE", "x") == "sv"  # a Common Voice locale
    with pytest.raises(ValueError, match=r"row 3: .*'tlh'"):
        language_code("tlh", "row 3")
