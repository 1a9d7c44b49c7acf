"""core.tokenizers: training from a recipe, the apps' tokenizers reproduced id for id, the
cache, checkpoints and local files.

The two ``test_reproduces_*`` tests pin what the apps' own trainers wrote before the apps
moved onto this module (hashes computed with the former implementations): the recipes
below are the ones those apps now pass.
"""

from __future__ import annotations

import hashlib
import warnings

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from core.cache import entry_path
from core.tokenizers import (
    CHECKPOINT_KEY,
    TokenizerCheckpointMixin,
    TokenizerRecipe,
    cached_tokenizer,
    load_tokenizer,
    load_tokenizer_state,
    save_tokenizer_state,
    texts_hash,
    tokenizer_from_json,
    tokenizer_to_json,
    train_tokenizer,
)

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"


def cxr_recipe(vocab_size: int) -> TokenizerRecipe:
    """The chest X-ray app's report tokenizer."""
    return TokenizerRecipe(
        "wordpiece",
        vocab_size,
        special_tokens=(PAD, BOS, EOS, UNK),
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
    )


def code_recipe(vocab_size: int) -> TokenizerRecipe:
    """The code app's byte-level BPE: end-of-text, FIM sentinels, chat role tags."""
    eot = "<|endoftext|>"
    specials = (eot, "<fim_prefix>", "<fim_suffix>", "<fim_middle>")
    specials += ("<|system|>", "<|user|>", "<|assistant|>")
    return TokenizerRecipe(
        "byte_bpe",
        vocab_size,
        special_tokens=specials,
        pad_token=eot,
        bos_token=eot,
        eos_token=eot,
        padding_side="left",
    )


REPORTS = [
    "The heart size is normal. No focal consolidation, pleural effusion or pneumothorax.",
    "Mild cardiomegaly. Small left pleural effusion; no pneumothorax.",
    "No acute cardiopulmonary abnormality. Lungs are clear.",
    "Right lower lobe opacity, may represent atelectasis or pneumonia.",
]
CODE = [
    "def add(a, b):\n    return a + b\n",
    "import os\n\nfor name in os.listdir('.'):\n    print(name)\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n",
]


def assert_same_tokenizer(ours, theirs, texts: list[str]) -> None:
    """Same tokenizer.json, vocabulary, special-token roles and ids on ``texts``."""
    assert tokenizer_to_json(ours) == tokenizer_to_json(theirs)
    assert ours.get_vocab() == theirs.get_vocab()
    assert ours.special_tokens_map == theirs.special_tokens_map
    assert ours.all_special_ids == theirs.all_special_ids
    assert ours.padding_side == theirs.padding_side
    for text in texts:
        assert ours(text).input_ids == theirs(text).input_ids, text
        assert ours.decode(ours(text).input_ids) == theirs.decode(theirs(text).input_ids)
    batch = texts[:3]
    assert ours(batch, padding=True).input_ids == theirs(batch, padding=True).input_ids


@pytest.fixture(scope="module")
def iu_reports() -> list[str]:
    """Real IU X-ray reports shipped with torchxrayvision (the chest X-ray app's corpus)."""
    from apps.medical_cxr.sources import load_embedded

    return [s.text for s in load_embedded()[:400]]


#: sha256 of ``tokenizer.json`` as the apps' own trainers wrote it before they moved onto
#: core.tokenizers (computed at commit 6d92005 with ``apps.medical_cxr.model.train_tokenizer``
#: on the first 300 embedded reports, and ``apps.code.tokenizer.train_bpe`` on CODE_CORPUS).
FORMER_CXR_SHA256 = {
    120: "df984d735eddb5733759a324ae653bd1e03865d8ce04a4a3747431df12c17e56",
    1000: "528e87a304c0e8ea7c6af0fd791850b4e6b5d1c6672640e432e12c3c70eaf05e",
}
FORMER_CODE_SHA256 = "9b46e788cb7bc594da75738633d52183ca378f650456ca1e869eb6520d659c91"
FORMER_CODE_IDS = [84, 71, 134, 114, 92, 75, 227, 134, 127, 84, 134, 114, 73, 134, 121, 74, 134,
                   109, 227, 165, 235, 247, 227, 179, 260, 245, 242, 361, 376, 14, 71, 18, 316,
                   267]  # fmt: skip
CODE_CORPUS = [
    f"def f{i}(x, y={i}):\n    return x * {i} + y ** {i % 7}  # n{i}\n" for i in range(300)
] + CODE * 10


def _sha256(tok) -> str:
    return hashlib.sha256(tokenizer_to_json(tok).encode()).hexdigest()


def test_reproduces_the_chest_xray_report_tokenizer(iu_reports) -> None:
    train = iu_reports[:300]
    for vocab_size, digest in FORMER_CXR_SHA256.items():
        tok = train_tokenizer(train, cxr_recipe(vocab_size))
        assert _sha256(tok) == digest, vocab_size
    assert [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]


def test_reproduces_the_code_bpe_tokenizer() -> None:
    tok = train_tokenizer(CODE_CORPUS, code_recipe(600))
    assert len(tok) == 600 and _sha256(tok) == FORMER_CODE_SHA256
    assert tok("naïve ünïcödé → 🐍 def add(a, b):").input_ids == FORMER_CODE_IDS
    assert tok.convert_ids_to_tokens(list(range(7))) == list(code_recipe(600).special_tokens)


def test_training_is_deterministic_and_sees_the_data() -> None:
    a = train_tokenizer(REPORTS, cxr_recipe(80))
    b = train_tokenizer(list(REPORTS), cxr_recipe(80))
    assert tokenizer_to_json(a) == tokenizer_to_json(b)
    c = train_tokenizer([*REPORTS, "cardiomegaly " * 20], cxr_recipe(80))
    assert tokenizer_to_json(a) != tokenizer_to_json(c)


def test_wordpiece_never_loses_a_seen_character() -> None:
    tok = train_tokenizer(REPORTS, cxr_recipe(70))  # room for characters, few words
    text = "pneumothorax; effusion"
    ids = tok(text).input_ids
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == "pneumothorax ; effusion"  # punctuation is its own word


@pytest.mark.parametrize(
    ("recipe", "texts", "message"),
    [
        (lambda: cxr_recipe(10), REPORTS, r"vocab_size=10 is smaller than the \d+ special"),
        (lambda: code_recipe(100), CODE, r"vocab_size=100 is too small.*at least 263"),
        (lambda: cxr_recipe(100), [], "at least one text"),
    ],
    ids=["wordpiece-too-small", "bpe-too-small", "no-texts"],
)
def test_bad_input_is_named(recipe, texts, message) -> None:
    with pytest.raises(ValueError, match=message):
        train_tokenizer(texts, recipe())


def test_recipe_is_checked() -> None:
    with pytest.raises(ValueError, match="algorithm 'sentencepiece' is unknown"):
        TokenizerRecipe("sentencepiece", 100)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"pad_token='<pad>' is not one of special_tokens"):
        TokenizerRecipe("byte_bpe", 300, special_tokens=("<eos>",), pad_token="<pad>")
    with pytest.raises(ValueError, match="needs an unk_token"):
        train_tokenizer(REPORTS, TokenizerRecipe("wordpiece", 100, special_tokens=(PAD,)))


# ------------------------------------------------------------------ cache
def test_cached_tokenizer_trains_once_per_recipe_and_data(tmp_path, monkeypatch) -> None:
    import core.tokenizers as module

    calls = []
    real = module.train_tokenizer
    monkeypatch.setattr(module, "train_tokenizer", lambda t, r: calls.append(1) or real(t, r))
    first = cached_tokenizer(REPORTS, cxr_recipe(80), app="demo", cache_dir=tmp_path)
    again = cached_tokenizer(iter(REPORTS), cxr_recipe(80), app="demo", cache_dir=tmp_path)
    assert len(calls) == 1
    assert tokenizer_to_json(first) == tokenizer_to_json(again)
    assert again.eos_token == EOS and again.pad_token_id == 0
    cached_tokenizer(REPORTS[:3], cxr_recipe(80), app="demo", cache_dir=tmp_path)  # new data
    cached_tokenizer(REPORTS, cxr_recipe(90), app="demo", cache_dir=tmp_path)  # new recipe
    assert len(calls) == 3
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("tokenizer-")]) == 3


def test_cache_key_holds_the_recipe_and_a_hash_of_the_texts(tmp_path) -> None:
    import tokenizers

    cached_tokenizer(REPORTS, cxr_recipe(80), app="demo", cache_dir=tmp_path)
    key = {
        "recipe": cxr_recipe(80).to_dict(),
        "data": texts_hash(REPORTS),
        "tokenizers": tokenizers.__version__,
    }
    assert entry_path("tokenizer", key, app="demo", cache_dir=tmp_path).is_file()
    assert texts_hash(["ab", "c"]) != texts_hash(["a", "bc"])  # boundaries count


# ------------------------------------------------------------------ storage
def test_json_round_trip_keeps_ids() -> None:
    tok = train_tokenizer(CODE, code_recipe(300))
    back = tokenizer_from_json(tokenizer_to_json(tok), code_recipe(300))
    assert_same_tokenizer(back, tok, CODE)


def test_load_tokenizer_from_a_file_and_a_folder(tmp_path) -> None:
    tok = train_tokenizer(REPORTS, cxr_recipe(80))
    file = tmp_path / "tokenizer.json"
    file.write_text(tokenizer_to_json(tok))
    assert_same_tokenizer(load_tokenizer(file, cxr_recipe(80)), tok, REPORTS)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "tokenizer.json").write_text(tokenizer_to_json(tok))
    assert load_tokenizer(plain, cxr_recipe(80))(REPORTS[0]).input_ids == tok(REPORTS[0]).input_ids

    code = train_tokenizer(CODE, code_recipe(300))
    code.save_pretrained(tmp_path / "saved")
    loaded = load_tokenizer(tmp_path / "saved")
    assert loaded(CODE[0]).input_ids == code(CODE[0]).input_ids
    assert loaded.eos_token == "<|endoftext|>" and loaded.pad_token_id == code.pad_token_id
    with pytest.raises(FileNotFoundError, match=r"no tokenizer at .*missing.*tokenizer\.json"):
        load_tokenizer(tmp_path / "missing")


def test_checkpoint_state_round_trip_without_the_recipe() -> None:
    tok = train_tokenizer(CODE, code_recipe(300))
    checkpoint: dict = {}
    save_tokenizer_state(checkpoint, tok)
    assert set(checkpoint) == {CHECKPOINT_KEY}
    back = load_tokenizer_state(checkpoint)
    assert_same_tokenizer(back, tok, CODE)
    assert back.convert_tokens_to_ids("<fim_middle>") == tok.convert_tokens_to_ids("<fim_middle>")
    assert load_tokenizer_state({}) is None


def test_checkpoint_written_by_the_chest_xray_app_is_read_with_its_recipe() -> None:
    tok = train_tokenizer(REPORTS, cxr_recipe(80))
    back = load_tokenizer_state({"tokenizer_json": tokenizer_to_json(tok)}, cxr_recipe(80))
    assert_same_tokenizer(back, tok, REPORTS)


class TextModule(TokenizerCheckpointMixin, pl.LightningModule):
    """A module whose tokenizer is trained after construction (as in ``setup``)."""

    def __init__(self) -> None:
        super().__init__()
        self.tokenizer = None
        self.embed = nn.Embedding(100, 4)
        self.loaded_hook_ran = False

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.loaded_hook_ran = True


def test_mixin_keeps_the_tokenizer_in_lightning_checkpoints(tmp_path) -> None:
    module = TextModule()
    module.tokenizer = train_tokenizer(REPORTS, cxr_recipe(80))
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    path = tmp_path / "m.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.save_checkpoint(path)
    raw = torch.load(path, weights_only=True)  # plain data only
    assert isinstance(raw[CHECKPOINT_KEY]["json"], str)
    loaded = TextModule.load_from_checkpoint(path)
    assert loaded.loaded_hook_ran
    assert_same_tokenizer(loaded.tokenizer, module.tokenizer, REPORTS)


def test_mixin_saves_nothing_without_a_tokenizer() -> None:
    checkpoint: dict = {}
    TextModule().on_save_checkpoint(checkpoint)
    assert CHECKPOINT_KEY not in checkpoint
