"""``CodeDataModule``: multitask code records -> packed, loss-masked batches.

Sources (``data.source``):

- ``embedded`` (the default): the five tasks of :mod:`apps.code.tasks`, built from the
  training modules of the standard library for training, and from held-out modules (never
  seen in pre-training) for validation and test. Validation and test also carry a
  ``general`` task: plain held-out library code with the loss on every token, whose
  perplexity measures forgetting (it does not count towards the training objective).
- ``jsonl``: ``paths`` (with optional ``val_paths`` / ``test_paths``), JSONL files or
  folders in the format of :mod:`apps.code.records`. Without ``val_paths``, a 10% of the
  training records drawn with ``split_seed`` is held out for validation (and reused for
  testing when there is no ``test_paths``).

Batches are dicts (see :func:`apps.code.packing.collate_packed`); the tokenizer is the
model's (``trainer.lightning_module.tokenizer``) unless ``tokenizer`` names a local folder.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

import lightning.pytorch as pl
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .corpus import held_out_part, iter_functions, list_modules, read_source, split_modules
from .fim import FimSentinels
from .packing import Encoded, collate_packed, encode_plain, encode_record, pack
from .records import Record, read_jsonl
from .tasks import TASKS, TaskOptions, build_records
from .tokenizer import load_code_tokenizer

GENERAL = "general"
#: Values of ``data.source``.
SOURCES = ("embedded", "jsonl")


def embedded_records(
    seed: int = 0,
    tasks: Sequence[str] = TASKS,
    options: TaskOptions | None = None,
    held_out_fraction: float = 0.15,
    max_train_per_task: int | None = 400,
    max_eval_per_task: int | None = 40,
    max_modules: int | None = None,
) -> tuple[list[Record], list[Record], list[Record], dict[str, list[str]]]:
    """``(train, val, test, held_out_texts)`` records of the embedded stdlib tasks.

    Held-out modules are split between validation and test by a stable hash of the module
    name; ``held_out_texts`` maps ``"val"``/``"test"`` to those modules' sources (for the
    ``general`` perplexity task). ``max_modules`` keeps only the first N training and the
    first N held-out modules (a quick run).
    """
    train_mods, held_mods = split_modules(list_modules(), held_out_fraction)
    if max_modules is not None:
        train_mods = dict(list(train_mods.items())[:max_modules])
        held_mods = dict(list(held_mods.items())[:max_modules])
    parts: dict[str, list] = {"train": [], "val": [], "test": []}
    texts: dict[str, list[str]] = {"val": [], "test": []}
    todo = [(n, p, True) for n, p in train_mods.items()]
    todo += [(n, p, False) for n, p in held_mods.items()]
    for name, path, is_train in tqdm(todo, desc="building the code tasks", leave=False):
        source = read_source(path)
        if source is None:
            continue
        part = "train" if is_train else held_out_part(name)
        parts[part].extend(iter_functions(name, source))
        if not is_train:
            texts[part].append(source)
    train = build_records(parts["train"], seed, tasks, options, max_train_per_task)
    val = build_records(parts["val"], seed + 1, tasks, options, max_eval_per_task)
    test = build_records(parts["test"], seed + 2, tasks, options, max_eval_per_task)
    return train, val, test, texts


def check_source(
    source: str,
    paths: Sequence[str] | None,
    val_paths: Sequence[str] | None,
    test_paths: Sequence[str] | None,
) -> None:
    """Refuse a ``data.source`` that is unknown or does not agree with the paths given."""
    if source not in SOURCES:
        raise ValueError(f"data.source={source!r} must be one of {', '.join(SOURCES)}.")
    given = [n for n, v in (("paths", paths), ("val_paths", val_paths),
                            ("test_paths", test_paths)) if v]  # fmt: skip
    if source == "embedded" and given:
        raise ValueError(
            f"data.{given[0]} is given but data.source is 'embedded' (the stdlib tasks); set "
            "data.source: jsonl to read your files, or drop the paths."
        )
    if source == "jsonl" and not paths:
        raise ValueError(
            "data.source: jsonl needs data.paths (the training JSONL files or folders)."
        )


class CodeDataModule(pl.LightningDataModule):
    """Multitask code data, packed into rows of ``seq_len`` tokens.

    Args:
        source: ``embedded`` (the stdlib tasks) or ``jsonl`` (``paths``).
        paths: ``jsonl``: JSONL files/folders for training.
        val_paths: ``jsonl``: files/folders for validation (default: 10% of ``paths``).
        test_paths: ``jsonl``: files/folders for testing (default: the validation records).
        tokenizer: Local tokenizer folder; ``None`` takes the model's tokenizer.
        tasks: Embedded tasks to build (any of completion, fim, doc2body, body2doc,
            func2tests).
        fim_rate: Share of code documents turned into FIM examples.
        spm_rate: Share of FIM examples in SPM order.
        fim_prefix: FIM prefix sentinel; ``None`` (the default): the model's
            (``CodeModule.fim_sentinels``: its tokenizer's own, or the ones it added), else
            StarCoder's ``<fim_prefix>``.
        fim_suffix: FIM suffix sentinel (``None``: as ``fim_prefix``).
        fim_middle: FIM middle sentinel (``None``: as ``fim_prefix``).
        held_out_fraction: Share of stdlib packages held out for validation/test.
        max_train_per_task: Cap on training records per embedded task.
        max_eval_per_task: Cap on validation and on test records per embedded task.
        max_modules: Use only the first N training and N held-out modules (quick runs).
        general_eval_windows: Windows of held-out plain code for the forgetting perplexity
            (0: none).
        seq_len: Packed row length in tokens (longer examples are truncated).
        pack_by_task: Pack each task separately (one task per row), as per-task adapters
            (``model.adapter_per_task``) need.
        batch_size: Packed rows per batch.
        split_seed: Seed of the data alone: the task construction, the packing and the
            ``jsonl`` validation hold-out (``seed_everything`` does not change them).
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        source: Literal["embedded", "jsonl"] = "embedded",
        paths: list[str] | None = None,
        val_paths: list[str] | None = None,
        test_paths: list[str] | None = None,
        tokenizer: str | None = None,
        tasks: list[str] | None = None,
        fim_rate: float = 0.5,
        spm_rate: float = 0.5,
        fim_prefix: str | None = None,
        fim_suffix: str | None = None,
        fim_middle: str | None = None,
        held_out_fraction: float = 0.15,
        max_train_per_task: int = 400,
        max_eval_per_task: int = 40,
        max_modules: int | None = None,
        general_eval_windows: int = 24,
        seq_len: int = 512,
        pack_by_task: bool = False,
        batch_size: int = 8,
        split_seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if seq_len < 16 or batch_size < 1:
            raise ValueError(
                f"data.seq_len={seq_len} must be >= 16 and data.batch_size={batch_size} >= 1."
            )
        check_source(source, paths, val_paths, test_paths)
        self.save_hyperparameters()
        self.source = source
        self.paths, self.val_paths, self.test_paths = paths, val_paths, test_paths
        self.tokenizer_path = tokenizer
        self.tasks = list(tasks or TASKS)
        self.fim_strings = (fim_prefix, fim_suffix, fim_middle)
        self.options = TaskOptions(fim_rate=fim_rate, spm_rate=spm_rate)
        self.held_out_fraction = held_out_fraction
        self.max_train_per_task, self.max_eval_per_task = max_train_per_task, max_eval_per_task
        self.max_modules = max_modules
        self.general_eval_windows = general_eval_windows
        self.seq_len, self.batch_size = seq_len, batch_size
        self.pack_by_task = pack_by_task
        self.split_seed, self.num_workers = split_seed, num_workers
        self.tokenizer: Any = None
        self.records: dict[str, list[Record]] = {}
        self.rows: dict[str, list[list[Encoded]]] = {}
        self.task_names: list[str] = []

    # ------------------------------------------------------------------ building
    def _resolve_tokenizer(self) -> Any:
        if self.tokenizer is not None:
            return self.tokenizer
        if self.tokenizer_path:
            return load_code_tokenizer(self.tokenizer_path)
        module = getattr(getattr(self, "trainer", None), "lightning_module", None)
        tok = getattr(module, "tokenizer", None)
        if tok is None:
            raise ValueError(
                "CodeDataModule has no tokenizer: set data.tokenizer to a local tokenizer "
                "folder, or use it with a model that has a .tokenizer (apps.code.CodeModule)."
            )
        return tok

    def _resolve_sentinels(self) -> FimSentinels:
        """The configured sentinels; the unset ones from the model's (or StarCoder's)."""
        module = getattr(getattr(self, "trainer", None), "lightning_module", None)
        model_sentinels = getattr(module, "fim_sentinels", None) or FimSentinels()
        pairs = zip(self.fim_strings, model_sentinels.tokens(), strict=True)
        return FimSentinels(*(given if given is not None else own for given, own in pairs))

    def _load_records(self) -> dict[str, list[Record]]:
        if self.source == "embedded":
            train, val, test, texts = embedded_records(
                self.split_seed, self.tasks, self.options, self.held_out_fraction,
                self.max_train_per_task, self.max_eval_per_task, self.max_modules,
            )  # fmt: skip
            self._general_texts = texts
            return {"train": train, "val": val, "test": test}
        self._general_texts = {"val": [], "test": []}
        train = list(read_jsonl(self.paths))
        if self.val_paths:
            val = list(read_jsonl(self.val_paths))
        else:
            rng = random.Random(self.split_seed)
            order = list(range(len(train)))
            rng.shuffle(order)
            cut = max(1, len(train) // 10)
            held = set(order[:cut])
            val = [r for i, r in enumerate(train) if i in held]
            train = [r for i, r in enumerate(train) if i not in held]
        test = list(read_jsonl(self.test_paths)) if self.test_paths else list(val)
        if not train:
            raise ValueError(f"data.paths {self.paths} hold no records.")
        return {"train": train, "val": val, "test": test}

    def _general_windows(self, part: str) -> list[Encoded]:
        if self.general_eval_windows <= 0:
            return []
        windows: list[Encoded] = []
        for text in self._general_texts.get(part, []):
            windows.extend(encode_plain(text, self.tokenizer, self.seq_len, GENERAL))
        random.Random(self.split_seed).shuffle(windows)
        return windows[: self.general_eval_windows]

    def setup(self, stage: str | None = None) -> None:
        if self.rows:
            return
        self.tokenizer = self._resolve_tokenizer()
        self.options = dataclasses.replace(self.options, sentinels=self._resolve_sentinels())
        self.records = self._load_records()
        seen = {r.task for part in self.records.values() for r in part}
        self.task_names = [t for t in self.tasks if t in seen] + sorted(seen - set(self.tasks))
        for part, records in self.records.items():
            encoded = [
                e
                for r in records
                if (e := encode_record(r, self.tokenizer, self.seq_len)) is not None
            ]
            if part != "train":
                encoded += self._general_windows(part)
            seed = self.split_seed if part == "train" else None
            self.rows[part] = pack(encoded, self.seq_len, seed=seed, by_task=self.pack_by_task)
        if any(e.task == GENERAL for rows in self.rows.values() for row in rows for e in row):
            self.task_names.append(GENERAL)

    def task_counts(self, part: str) -> dict[str, int]:
        """Records per task in ``part`` (``train``/``val``/``test``)."""
        return dict(Counter(r.task for r in self.records.get(part, [])))

    # ------------------------------------------------------------------ loaders
    def _loader(self, part: str, shuffle: bool) -> DataLoader:
        if part not in self.rows:
            raise RuntimeError("CodeDataModule.setup() must run before asking for a loader.")
        collate = partial(
            collate_packed, pad_id=self.tokenizer.eos_token_id, task_names=self.task_names,
            max_len=self.seq_len,
        )  # fmt: skip
        return DataLoader(
            self.rows[part], batch_size=self.batch_size, shuffle=shuffle, collate_fn=collate,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def eval_records(self, part: str = "test") -> list[Record]:
        """The raw records of ``part`` (for generation-based evaluation)."""
        return list(self.records.get(part, []))
