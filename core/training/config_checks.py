"""Checks of a run's configuration that name the file or option at fault, before the run starts.

jsonargparse reports a YAML syntax error without the file's name, and torch rejects a bad
optimizer argument (``Invalid learning rate: -0.01``) only once ``fit`` has begun, without
the option's name. These checks run earlier and say which file/line or option to fix.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from .errors import UsageError

YAML_SUFFIXES = (".yaml", ".yml")

#: Words of torch's optimizer messages -> the argument they are about.
_OPTIMIZER_ARG_WORDS = {
    "learning rate": "lr",
    "epsilon": "eps",
    "beta": "betas",
    "weight_decay": "weight_decay",
    "momentum": "momentum",
    "dampening": "dampening",
}


def option_values(argv: Sequence[str]) -> Iterator[tuple[str, str]]:
    """``(name, value)`` for every option of a command line, in order.

    An option is a token ``--<name>=<value>`` or ``--<name>`` followed by its value (the next
    token, whatever it is: a flag's next token is read as its value); ``name`` is without the
    dashes, ``value`` is ``""`` for a last token without ``=``. Callers decide what a value
    means (a YAML file, a key); positional tokens are skipped.
    """
    for i, token in enumerate(argv):
        if not token.startswith("--"):
            continue
        name, eq, inline = token[2:].partition("=")
        yield name, inline if eq else (argv[i + 1] if i + 1 < len(argv) else "")


def yaml_files_in(argv: Sequence[str]) -> list[Path]:
    """The YAML files named on a command line: ``--config`` values and other ``*.yaml`` values.

    ``--config`` may also hold inline YAML (not a file); such values are left to jsonargparse.
    """
    files: list[Path] = []
    for _, value in option_values(argv):
        path = Path(value)
        if path.suffix.lower() in YAML_SUFFIXES and path.is_file() and path not in files:
            files.append(path)
    return files


def check_yaml_syntax(path: str | Path) -> None:
    """Raise :class:`UsageError` naming ``path``, the line and the problem if it is not YAML.

    Raises:
        UsageError: The file cannot be read or is not valid YAML.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"config file {path} cannot be read ({err}); give a YAML file.") from err
    try:
        yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context = ""
        if err.context and err.context_mark is not None:
            context = f" ({err.context} opened at line {err.context_mark.line + 1})"
        raise UsageError(
            f"config file {path}{where}: YAML syntax error: {err.problem}{context}; fix the "
            "YAML there (indentation, a missing ':', bracket or quote)."
        ) from err
    except yaml.YAMLError as err:
        raise UsageError(f"config file {path}: not valid YAML ({err}); fix the file.") from err


def _arg_in_message(message: str, init_args: dict[str, Any]) -> str | None:
    for name in init_args:
        if re.search(rf"\b{re.escape(name)}\b", message):
            return name
    lowered = message.lower()
    for words, name in _OPTIMIZER_ARG_WORDS.items():
        if words in lowered and name in init_args:
            return name
    return None


def check_optimizer(
    factory: Callable[[list[torch.nn.Parameter]], Any],
    key: str,
    class_path: str,
    init_args: dict[str, Any],
) -> None:
    """Build the optimizer once on a dummy parameter, so a bad argument is named up front.

    Args:
        factory: The module's optimizer callable (``OptimizerCallable``).
        key: The option holding it, e.g. ``model.optimizer``.
        class_path: Its class, for the message.
        init_args: Its arguments as configured, for the message.

    Raises:
        UsageError: The optimizer rejects its arguments (a negative ``lr``, ...). Other
            exceptions are left for the run to raise, where they have their context.
    """
    try:
        factory([torch.nn.Parameter(torch.zeros(1))])
    except ValueError as err:
        arg = _arg_in_message(str(err), init_args)
        if arg is None:
            given = ", ".join(f"{k}={v!r}" for k, v in init_args.items())
            raise UsageError(
                f"{key}: {class_path}({given}) rejects its arguments: {err}; fix them in the "
                f"config or with --{key}.init_args.<name> <value>."
            ) from err
        raise UsageError(
            f"--{key}.init_args.{arg}={init_args[arg]!r} is not accepted by {class_path}: "
            f"{err}; give a valid value in the config or with --{key}.init_args.{arg} <value>."
        ) from err
