"""Checks of ``--ckpt_path`` before a run uses it: readable, of this app, no conflicting option.

LightningCLI loads the checkpoint's hyperparameters over the parsed config, so a value the
user gave (``--model.hidden_size 64``) is silently replaced by the checkpoint's (2048); a
missing or truncated file surfaces as a traceback from deep inside ``fit``; a checkpoint of
another app fails with ``Parsing of ckpt_path hyperparameters failed!``. Each of these is a
:class:`~core.training.errors.UsageError` here, raised before the trainer writes anything.

Every checkpoint written through ``run_cli`` records its module class (:class:`ModuleClassStamp`),
so the one given to another app can be named.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from jsonargparse import Namespace

from .config_checks import option_values
from .errors import UsageError

#: Top-level checkpoint key holding ``<module>.<class>`` of the LightningModule that saved it.
MODULE_CLASS_KEY = "module_class"
#: ``ckpt_path`` values that Lightning resolves itself (not a local file).
SPECIAL_CKPT_PATHS = frozenset({"last", "best", "hpc", "registry"})
_MISSING = object()


def class_name(cls: type) -> str:
    """``<module>.<qualname>`` of a class, as stored in checkpoints and configs."""
    return f"{cls.__module__}.{cls.__qualname__}"


def app_of(name: str) -> str:
    """The app of a class name: ``apps.vision.module.VisionModule`` -> ``vision``."""
    parts = name.rpartition(".")[0].split(".")
    return parts[-2] if len(parts) >= 2 else parts[0]


class ModuleClassStamp(pl.Callback):
    """Record the LightningModule's class in every checkpoint (key ``module_class``).

    Lightning stores only the hyperparameters, which do not say which module (which app)
    they belong to; with the class a checkpoint given to the wrong app is named as such.
    """

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Add ``module_class`` to the checkpoint being saved."""
        checkpoint[MODULE_CLASS_KEY] = class_name(type(pl_module))


def is_local_path(ckpt_path: str) -> bool:
    """Whether ``ckpt_path`` names a local file (not ``last``/``best``/... or a URL)."""
    return not (
        ckpt_path in SPECIAL_CKPT_PATHS or ckpt_path.startswith("registry:") or "://" in ckpt_path
    )


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint given with ``--ckpt_path``, or say what is wrong with the file.

    Raises:
        UsageError: The path does not exist, is a directory, an empty, truncated or
            corrupt file, or not a Lightning checkpoint.
    """
    p = Path(path)
    example = "runs/<app>/version_<n>/checkpoints/last.ckpt"
    if not p.exists():
        raise UsageError(
            f"--ckpt_path {path}: no such file; give the checkpoint of an earlier run, e.g. "
            f"{example}."
        )
    if p.is_dir():
        found = sorted(p.rglob("*.ckpt"), key=lambda f: (f.name != "last.ckpt", str(f)))
        hint = f" in it, e.g. {found[0]}" if found else f", e.g. {example}"
        raise UsageError(f"--ckpt_path {path} is a directory; give a .ckpt file{hint}.")
    if p.stat().st_size == 0:
        raise UsageError(
            f"--ckpt_path {path} is an empty file (its run was probably stopped while "
            "saving); give another checkpoint of that run, e.g. checkpoints/last.ckpt or "
            "best.ckpt."
        )
    try:
        ckpt = torch.load(p, weights_only=True, map_location="cpu")
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0]
        raise UsageError(
            f"--ckpt_path {path} cannot be read as a checkpoint ({reason}); the file is "
            "truncated, corrupt or not a checkpoint: give a complete .ckpt file written by a "
            "run (checkpoints/last.ckpt or best.ckpt)."
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UsageError(
            f"--ckpt_path {path} is not a Lightning checkpoint (it has no state_dict); give a "
            f".ckpt file written by a run, e.g. {example}."
        )
    return ckpt


def saved_module_class(ckpt: dict[str, Any]) -> str | None:
    """The module class that saved ``ckpt``: its stamp, else the hyperparameters' class path."""
    name = ckpt.get(MODULE_CLASS_KEY) or (ckpt.get("hyper_parameters") or {}).get("_class_path")
    return name if isinstance(name, str) else None


def _import_class(name: str) -> type | None:
    module_name, _, attr = name.rpartition(".")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception:  # a class of a package that is gone or does not import
        return None
    obj = getattr(obj, attr, None)
    return obj if isinstance(obj, type) else None


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package that does not exist
        return False


def _in_package(cls: type, package: str) -> bool:
    return cls.__module__ == package or cls.__module__.startswith(package + ".")


def check_module_class(
    ckpt: dict[str, Any],
    path: str | Path,
    expected: type,
    app_name: str,
    app_package: str | None = None,
) -> None:
    """Raise if ``ckpt`` was saved by a module of another app.

    Args:
        ckpt: The loaded checkpoint.
        path: Its path, for the message.
        expected: The module class the run instantiates (or, when the config picks the
            class, the base class it must derive from).
        app_name: This app's name, for the message.
        app_package: When the config picks the class: the app's package (e.g.
            ``apps.medical_cxr``); the checkpoint's class must derive from one of its classes.

    Raises:
        UsageError: Naming the checkpoint's class and app and the one expected.
    """
    name = saved_module_class(ckpt)
    if name is None or name == class_name(expected):
        return
    cls = _import_class(name)
    of_app = app_package is None or (
        cls is not None and any(_in_package(c, app_package) for c in cls.__mro__)
    )
    if cls is not None and issubclass(cls, expected) and of_app:
        return
    wanted = class_name(expected) if app_package is None else f"a module of {app_package}"
    other = name.rpartition(".")[0].rpartition(".")[0]
    runner = ""
    if other and _module_exists(f"{other}.train"):
        runner = f", or use that app's command line (python -m {other}.train)"
    raise UsageError(
        f"--ckpt_path {path} was written by {name} (app {app_of(name)!r}), but this command "
        f"line runs {wanted} (app {app_name!r}); give a checkpoint of this app, e.g. "
        f"runs/{app_name}/version_<n>/checkpoints/last.ckpt{runner}."
    )


# ---------------------------------------------------------------------- conflicting options
def _leaf_keys(prefix: str, value: Any) -> Iterator[str]:
    if isinstance(value, dict) and value:
        for key, sub in value.items():
            yield from _leaf_keys(f"{prefix}.{key}", sub)
    else:
        yield prefix


def _yaml_model_keys(prefix: str, path: Path) -> list[str]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return []  # reported by the parser / the YAML check
    if prefix == "":
        data = data.get("model") if isinstance(data, dict) else None
        prefix = "model"
    return list(_leaf_keys(prefix, data)) if isinstance(data, dict) else []


def explicit_model_options(
    argv: Sequence[str], default_config: str | Path | None = None
) -> list[tuple[str, str]]:
    """``(key, where)`` for every ``model`` option the user gave, not the app's defaults.

    Options given as ``--model.<key> <value>`` or ``--model.<key>=<value>``, and the
    ``model`` keys of the user's ``--config`` files (and of a YAML file given to
    ``--model``/``--model.<key>``). ``where`` says where, for messages.
    """
    default = Path(default_config).resolve() if default_config is not None else None
    found: list[tuple[str, str]] = []
    for name, value in option_values(argv):
        if name == "config":
            path = Path(value)
            if path.is_file() and path.resolve() != default:
                found += [(key, f"in {value}") for key in _yaml_model_keys("", path)]
        elif name == "model" or name.startswith("model."):
            key = name.rstrip("+")
            path = Path(value)
            if path.suffix.lower() in (".yaml", ".yml") and path.is_file():
                found += [(k, f"in {value}") for k in _yaml_model_keys(key, path)]
            else:
                found.append((key, f"with --{name}"))
    return found


def lookup(config: Namespace | dict, key: str) -> Any:
    """``config[key]`` for a dotted key, stepping into ``init_args`` where the key skips it.

    ``model.adapter.r`` finds ``model.adapter.init_args.r``, as jsonargparse does.
    Returns a private sentinel where the key is absent.
    """
    current: Any = config
    for part in key.split("."):
        if not isinstance(current, Namespace | dict):
            return _MISSING
        value = current.get(part, _MISSING)
        if value is _MISSING:
            inner = current.get("init_args", None)
            value = inner.get(part, _MISSING) if isinstance(inner, Namespace | dict) else _MISSING
        if value is _MISSING:
            return _MISSING
        current = value
    return current


def _comparable(value: Any) -> Any:
    if isinstance(value, Namespace):
        # A class given by name (--model.adapter SsfConfig): compare the class, not the
        # arguments (those the user set are compared key by key).
        return value.get("class_path", _MISSING)
    return value


def _show(value: Any) -> str:
    if isinstance(value, Namespace):
        value = value.as_dict()
    try:
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6)
    except yaml.YAMLError:
        return repr(value)
    return text.strip().removesuffix("...").strip()


def check_no_conflicts(
    given: Namespace,
    merged: Namespace,
    options: Sequence[tuple[str, str]],
    ckpt_path: str | Path,
    subcommand: str,
) -> None:
    """Raise if the checkpoint's hyperparameters overrode a ``model`` option the user gave.

    Args:
        given: The subcommand's config before the checkpoint's hyperparameters were merged.
        merged: The same after the merge (what the run would use).
        options: From :func:`explicit_model_options`.
        ckpt_path: The checkpoint, for the message.
        subcommand: ``fit``/``validate``/``test``/``predict``, for the fix.

    Raises:
        UsageError: Naming each conflicting option, both values and the fix.
    """
    conflicts = []
    seen = set()
    for key, where in reversed(options):  # the last setting of a key is the one in force
        if key in seen:
            continue
        seen.add(key)
        before, after = lookup(given, key), lookup(merged, key)
        if before is _MISSING or after is _MISSING:
            continue
        before, after = _comparable(before), _comparable(after)
        if before != after:
            conflicts.append(f"{key}={_show(after)} (you gave {_show(before)} {where})")
    if not conflicts:
        return
    conflicts.reverse()
    fix = (
        "drop those options to resume with the checkpoint's values, or leave out --ckpt_path "
        "to start a fresh run with yours"
        if subcommand == "fit"
        else f"drop those options: {subcommand} uses the values the checkpoint was trained with"
    )
    raise UsageError(
        f"--ckpt_path {ckpt_path} was trained with other values than given: "
        f"{'; '.join(conflicts)}; {fix}."
    )
