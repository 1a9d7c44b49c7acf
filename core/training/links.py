"""Options that model and data share, set once: ``run_cli(..., links={source: target})``.

An image size, a label policy or a split is often an argument of both the data module and
the model. A link makes the target a copy of the source (``parser.link_arguments(source,
target, apply_on="parse")``), so the two cannot disagree. The user sets the source only;
a linked target given on the command line or in any config file is refused with a message
naming the source (jsonargparse itself would ignore it silently in a config file, and on
the command line too where the config picks the model class).

Keys are written as the user writes options, ``data.image_size`` and ``model.image_size``;
where the config picks the model class (``subclass_mode``) the model key is
``model.init_args.image_size`` for jsonargparse, which :func:`parser_key` spells out. A model
class without the target argument is simply not linked (one recipe's module may not have it).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace

from .errors import UsageError

__all__ = ["check_links", "check_targets_not_given", "given_keys", "parser_key", "plain_key"]

SECTIONS = ("model", "data")


def plain_key(key: str) -> str:
    """``model.init_args.image_size`` -> ``model.image_size`` (drop ``init_args`` steps)."""
    return ".".join(part for part in key.split(".") if part != "init_args")


def parser_key(key: str, subclass_mode: bool) -> str:
    """The key jsonargparse links: ``model.x`` -> ``model.init_args.x`` in ``subclass_mode``."""
    key = plain_key(key)
    section, _, rest = key.partition(".")
    if subclass_mode and section == "model" and rest:
        return f"model.init_args.{rest}"
    return key


def check_links(links: Mapping[str, str]) -> None:
    """Raise ``ValueError`` unless every link joins a ``model.*`` and a ``data.*`` option."""
    for source, target in links.items():
        for key in (source, target):
            section, _, rest = plain_key(key).partition(".")
            if section not in SECTIONS or not rest:
                raise ValueError(
                    f"run_cli links: {key!r} must name a model or data option, e.g. "
                    "'data.image_size'."
                )
        if plain_key(source) == plain_key(target):
            raise ValueError(f"run_cli links: {source!r} is linked to itself.")


def _leaves(prefix: str, value: Any) -> Iterator[str]:
    if isinstance(value, dict) and value:
        for key, sub in value.items():
            if key in ("class_path", "__path__"):
                continue
            yield from _leaves(f"{prefix}.{key}" if prefix else str(key), sub)
    elif prefix:
        yield prefix


def _yaml_keys(path: Path, prefix: str = "") -> list[str]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []  # reported by the YAML check / the parser
    return [plain_key(k) for k in _leaves(prefix, data)] if isinstance(data, dict) else []


def given_keys(argv: Sequence[str]) -> list[tuple[str, str]]:
    """``(key, where)`` for every option ``argv`` sets, keys in :func:`plain_key` form.

    Counts ``--<key> <value>`` / ``--<key>=<value>``, the keys of ``--config`` files and of
    YAML files given as an option's value (``--model model.yaml``).
    """
    found: list[tuple[str, str]] = []
    for i, token in enumerate(argv):
        if not token.startswith("--"):
            continue
        name, eq, inline = token[2:].partition("=")
        value = inline if eq else (argv[i + 1] if i + 1 < len(argv) else "")
        path = Path(value)
        is_yaml = path.suffix.lower() in (".yaml", ".yml") and path.is_file()
        if name == "config":
            if is_yaml:
                found += [(k, f"in {value}") for k in _yaml_keys(path)]
            continue
        name = name.rstrip("+")
        if is_yaml:
            found += [(k, f"in {value}") for k in _yaml_keys(path, name)]
        found.append((plain_key(name), f"with --{name}"))
    return found


def check_targets_not_given(
    links: Mapping[str, str], argv: Sequence[str], default_config: str | Path
) -> None:
    """Raise :class:`UsageError` if a linked target is set anywhere, naming its source.

    Args:
        links: ``{source: target}``.
        argv: The command line (``--config`` files included).
        default_config: The app's default config (an app must not set a target there either).
    """
    given = [(k, f"in {default_config}") for k in _yaml_keys(Path(default_config))]
    given += given_keys(argv)
    for source, target in links.items():
        target_key = plain_key(target)
        for key, where in given:
            if key == target_key or key.startswith(f"{target_key}."):
                raise UsageError(
                    f"{target_key} is set from {plain_key(source)} (the two are linked), but it "
                    f"was given {where}; set {plain_key(source)} instead."
                )


def lookup_plain(config: Namespace, key: str, missing: Any = None) -> Any:
    """``config[key]`` for a :func:`plain_key`, stepping into ``init_args`` where needed."""
    current: Any = config
    for part in key.split("."):
        if not isinstance(current, Namespace):
            return missing
        if part in current:
            current = current[part]
        elif "init_args" in current and isinstance(current["init_args"], Namespace):
            current = current["init_args"].get(part, missing)
            if current is missing:
                return missing
        else:
            return missing
    return current
