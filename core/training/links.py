"""Options that model and data share, set once: ``run_cli(..., links={source: target})``.

An image size, a label policy or a split is often an argument of both the data module and
the model. A link makes the target a copy of the source (``parser.link_arguments(source,
target, apply_on="parse")``), so the two cannot disagree. The user sets the source only;
a linked target given on the command line or in any config file is refused with a message
naming the source (jsonargparse itself would ignore it silently in a config file, and on
the command line too where the config picks the model class).

Keys are written as the user writes options, ``data.image_size`` and ``model.image_size``;
where the config picks the model class (``subclass_mode``) the model key is
``model.init_args.image_size`` for jsonargparse, which :func:`parser_key` spells out. Where
the config picks it, a model class without the target argument is simply not linked (one
recipe's module may not have it); where the class is fixed, that is an error naming the link.

A module usually takes the target through ``**kwargs``, one or more levels deep
(``PreferenceModule -> ReportGenModule -> EncoderModule(image_size)``). jsonargparse lists a
base's options as the class's own only where the ``**kwargs`` are passed on as they are
(``super().__init__(..., **kwargs)``); passed on in any other way (``**dict(kwargs, x=1)``,
``**{**kwargs}``, a copy, a helper method) it cannot follow them, the base's options are not
options of the class, and jsonargparse would skip a link to one without a word. That is an
error naming the link, the class and the ``__init__`` to change (:func:`hidden_option`).
"""

from __future__ import annotations

import inspect
import itertools
import pydoc
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace

from .config_checks import YAML_SUFFIXES, option_values
from .errors import UsageError

__all__ = [
    "HiddenOption",
    "check_links",
    "check_links_reach",
    "check_targets_not_given",
    "given_keys",
    "hidden_option",
    "jsonargparse_options",
    "link_error",
    "parser_key",
    "plain_key",
]

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
    for name, value in option_values(argv):
        path = Path(value)
        is_yaml = path.suffix.lower() in YAML_SUFFIXES and path.is_file()
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


# ----------------------------------------------------- targets hidden behind **kwargs
def jsonargparse_options(cls: type) -> set[str]:
    """The ``__init__`` parameters of ``cls`` as jsonargparse lists them (``**kwargs`` followed).

    The resolver the parser itself uses (not exported by jsonargparse, hence imported here).
    """
    from jsonargparse._parameter_resolvers import get_signature_parameters

    return {param.name for param in get_signature_parameters(cls)}


def _own_parameters(cls: type) -> dict[str, inspect.Parameter] | None:
    """The parameters of the ``__init__`` that ``cls`` defines itself (``None``: unreadable)."""
    try:
        return dict(inspect.signature(vars(cls)["__init__"]).parameters)
    except (KeyError, TypeError, ValueError):
        return None


def _named(params: Mapping[str, inspect.Parameter]) -> set[str]:
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return {name for name, param in params.items() if param.kind not in variadic}


def _import_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass(frozen=True)
class HiddenOption:
    """An option a module class takes through ``**kwargs`` that jsonargparse cannot follow.

    Attributes:
        name: The option, e.g. ``"image_size"``.
        module_cls: The class the config picked (or the app's fixed module class).
        hidden_by: The class whose ``__init__`` passes its ``**kwargs`` on in a way jsonargparse
            does not follow.
        taken_by: The base whose ``__init__`` names the option.
    """

    name: str
    module_cls: type
    hidden_by: type
    taken_by: type

    def message(self, source: str, target: str) -> str:
        """The error for the link ``source -> target``: what is hidden, where, and the fix."""
        hidden = self.hidden_by.__qualname__
        return (
            f"run_cli links: {plain_key(source)} -> {plain_key(target)} cannot reach "
            f"{_import_path(self.module_cls)}: its base {self.taken_by.__qualname__} takes "
            f"{self.name!r}, but {hidden}.__init__ passes its **kwargs on in a way jsonargparse "
            f"does not follow, so {self.name!r}, like every other option of {hidden}'s bases, "
            f"is not an option of {self.module_cls.__qualname__} and the link would be dropped "
            f"silently. In {hidden}.__init__ pass them on as they are: "
            "super().__init__(..., **kwargs)."
        )


def hidden_option(module_cls: type, name: str) -> HiddenOption | None:
    """Whether ``module_cls`` takes ``name`` through ``**kwargs`` jsonargparse cannot follow.

    Walks the ``__init__`` methods of ``module_cls``'s MRO down to the first whose options (as
    jsonargparse lists them) include ``name``. The class above it lost ``name`` either by
    giving it itself (``super().__init__(name=..., **kwargs)``: jsonargparse followed its
    ``**kwargs``, so other options of the base are among its own) or because jsonargparse could
    not follow its ``**kwargs`` at all (none of the base's other options are among its own).

    Returns:
        The hidden option, or ``None`` where jsonargparse lists ``name`` for ``module_cls``,
        where no base takes it, or where a class on the way gives it itself.
    """
    if name in jsonargparse_options(module_cls):
        return None
    chain = [k for k in module_cls.__mro__ if k is not object and "__init__" in vars(k)]
    for depth, (upper, lower) in enumerate(itertools.pairwise(chain)):
        params = _own_parameters(upper)
        if params is None or name in params:
            return None
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return None  # the keyword arguments stop here: nothing below is an option
        below = jsonargparse_options(lower)
        if name not in below:
            continue
        if (jsonargparse_options(upper) - _named(params)) & below:
            return None  # followed: ``upper`` gives ``name`` itself
        taken_by = next(
            (k for k in chain[depth + 1 :] if name in (_own_parameters(k) or {})), lower
        )
        return HiddenOption(name, module_cls, upper, taken_by)
    return None


def _model_option(target: str) -> str | None:
    """``model.image_size`` -> ``image_size``; ``None`` for a data or a nested option."""
    section, _, name = plain_key(target).partition(".")
    return name if section == "model" and name and "." not in name else None


def check_links_reach(links: Mapping[str, str], model_config: Any) -> None:
    """Raise where the class the config picked hides a link's target (``subclass_mode``).

    jsonargparse skips a link whose target the picked class lacks; that is right for a class
    without the option and wrong for one that takes it through ``**kwargs`` jsonargparse
    cannot follow (:func:`hidden_option`).

    Args:
        links: ``{source: target}``.
        model_config: The parsed ``model`` value (``class_path`` and ``init_args``).

    Raises:
        TypeError: Naming the link, the class and the ``__init__`` that hides the option.
    """
    if not isinstance(model_config, Namespace) or not model_config.get("class_path"):
        return
    init_args = model_config.get("init_args")
    module_cls = pydoc.locate(str(model_config["class_path"]))
    if not isinstance(module_cls, type):
        return  # jsonargparse has reported it
    for source, target in links.items():
        name = _model_option(target)
        if name is None or (isinstance(init_args, Namespace) and name in init_args):
            continue
        hidden = hidden_option(module_cls, name)
        if hidden is not None:
            raise TypeError(hidden.message(source, target))


def link_error(source: str, target: str, module_cls: type, reason: Exception) -> Exception:
    """The error for a link jsonargparse refused to add (the module class is fixed).

    Args:
        source: The link's source.
        target: The link's target.
        module_cls: The app's module class.
        reason: jsonargparse's error (e.g. ``No action for key "model.image_size"``).

    Returns:
        A ``TypeError`` where ``module_cls`` hides the target behind ``**kwargs``
        (:class:`HiddenOption`), else a ``ValueError`` naming the link and the reason.
    """
    name = _model_option(target)
    hidden = hidden_option(module_cls, name) if name is not None else None
    if hidden is not None:
        return TypeError(hidden.message(source, target))
    return ValueError(
        f"run_cli links: cannot link {plain_key(source)} to {plain_key(target)} "
        f"({_import_path(module_cls)}): {reason}"
    )
