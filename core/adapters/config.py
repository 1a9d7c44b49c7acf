"""The base of every adapter config, and reading a config back from a dict.

Each method's config dataclass lives in the method's own module (``LoraConfig`` in
``lora.py``, ...) and subclasses :class:`AdapterConfig`. A config knows how to turn itself
into the ``adapter_config.json`` written next to the weights (Hugging Face PEFT field names
for LoRA, the same layout with our own ``peft_type`` for methods PEFT does not ship) and
back, and says what its method needs (:attr:`AdapterConfig.needs_calibration`, ...), so no
code elsewhere has to compare method names.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

from .registry import get_config_class, known_methods

# Fields of PEFT's ``PeftConfig`` (peft 0.21): every adapter_config.json PEFT writes has them.
# Readers of every method accept them; none changes how the weights are applied.
PEFT_BASE_FIELDS = frozenset(
    {
        "task_type",
        "peft_type",
        "auto_mapping",
        "peft_version",
        "base_model_name_or_path",
        "revision",
        "inference_mode",
    }
)


class UnknownFieldWarning(UserWarning):
    """An adapter config field the reader does not know; it is ignored."""


@dataclass
class AdapterConfig:
    """Fields shared by every adapter method.

    ``target_modules`` selects the layers that get the adapter: a list of exact module names
    or dotted suffixes (``"q_proj"`` matches ``model.layers.0.self_attn.q_proj``), a single
    string read as a regular expression that must match the full module name (PEFT's rule),
    ``"all-linear"``, or ``None`` for the method's default.

    ``modules_to_save`` names whole modules (same matching rules, e.g. a new ``head``) that
    train fully next to the adapter and are saved inside the adapter file, as PEFT does.
    They are trained in place: no frozen copy of the original is kept.

    Subclasses set ``method`` (the registry name) and ``peft_type``, and override the
    capability properties below where their values say otherwise.
    """

    method: ClassVar[str] = ""
    peft_type: ClassVar[str] = ""
    target_modules: list[str] | str | None = None
    modules_to_save: list[str] | None = None

    # ------------------------------------------------------------------ capabilities
    @property
    def needs_calibration(self) -> bool:
        """Whether injecting needs calibration batches (``inject(..., calibration=...)``):
        the unit is built from the input covariances of its layers (LoRA ``init="corda"``)."""
        return False

    @property
    def rewrites_base(self) -> bool:
        """Whether the adapter moves part of W0 into itself, leaving a residual base weight
        (PiSSA, CorDA, LoLDU); such adapters cannot share a base in an ``AdapterBank``."""
        return False

    @property
    def stackable(self) -> bool:
        """Whether adapters of this config can share one stacked unit in an ``AdapterBank``
        (served by the multi-adapter kernel); the method must register a ``Stacking``."""
        return False

    def describe(self) -> str:
        """A short name of the configured method for messages (``"LoRA init='corda'"``)."""
        return self.method

    # ------------------------------------------------------------------ values and JSON
    def validate(self) -> None:
        """Raise ``ValueError`` naming the field and the fix when a value is out of range."""

    def to_json_dict(self) -> dict[str, Any]:
        """The ``adapter_config.json`` content for this config."""
        data = dataclasses.asdict(self)
        data["peft_type"] = self.peft_type
        data["method"] = self.method
        return data

    def saved_json_dict(self, notes: dict[str, Any]) -> dict[str, Any]:
        """The ``adapter_config.json`` to write next to weights saved by the units'
        ``portable_state``; ``notes`` merges what the units reported (e.g. that they
        converted their weights to another form). The default: :meth:`to_json_dict`."""
        return self.to_json_dict()

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> AdapterConfig:
        """Build the config from an ``adapter_config.json`` dict.

        Keys it does not read are dropped here; :func:`config_from_dict` checks them first
        (a warning for unknown fields, an error for misspelled ones).
        """
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def fields_read(cls, data: dict[str, Any]) -> frozenset[str]:
        """The keys of ``data`` that :meth:`from_json_dict` reads or knowingly ignores.

        For this library's field names: the dataclass fields, ``method`` and PEFT's common
        fields (``peft_type``, ``task_type``, ...), which carry no numerics.
        """
        return frozenset({f.name for f in dataclasses.fields(cls)} | {"method"}) | PEFT_BASE_FIELDS

    @classmethod
    def field_names(cls) -> frozenset[str]:
        """Every field name a config of this method may use, in any naming (the names a
        misspelled key is compared with)."""
        return cls.fields_read({})


def require_positive(value: float, name: str, label: str) -> None:
    """Raise ``ValueError`` unless ``value > 0`` (``label``: the method, for the message)."""
    if value <= 0:
        raise ValueError(f"{label} config: {name}={value!r} must be > 0.")


def config_from_dict(data: dict[str, Any], where: str = "the adapter config") -> AdapterConfig:
    """Build a config from a dict holding a ``method`` (or PEFT ``peft_type``) key.

    ``where`` names the source in messages (e.g. the ``adapter_config.json`` path). A key the
    method does not know is ignored with an :class:`UnknownFieldWarning`; a key that looks like
    a misspelling of a known field (``lora_alpah``) is a ``ValueError`` naming both, because
    ignoring it would silently use the default instead of the value meant.
    """
    if not isinstance(data, dict):
        raise ValueError(
            f"{where} must be a mapping of field names to values (a JSON object), got "
            f"{type(data).__name__}; re-save the adapter."
        )
    method = data.get("method") or data.get("peft_type")
    if not method:
        raise ValueError(
            "Adapter config dict has no 'method' key; add e.g. method: lora "
            f"(known: {known_methods()})."
        )
    cls = get_config_class(str(method))
    check_fields(cls, data, where)
    config = cls.from_json_dict(data)
    config.validate()
    return config


def check_fields(cls: type[AdapterConfig], data: dict[str, Any], where: str) -> None:
    """Raise on misspelled keys of ``data`` and warn about unknown ones (see
    :func:`config_from_dict`)."""
    read = cls.fields_read(data)
    names = cls.field_names()
    misspelled, other_naming, unknown = [], [], []
    for key in sorted(str(k) for k in data if str(k) not in read):
        if key in names:
            other_naming.append(key)
        elif (near := misspelling_of(key, names)) is not None:
            misspelled.append(f"{key!r} in {where} looks like a misspelling of {near!r}")
        else:
            unknown.append(key)
    if misspelled:
        raise ValueError(f"{'; '.join(misspelled)}; fix the field name.")
    if other_naming:
        warnings.warn(
            f"{where}: field(s) {other_naming} are ignored: the other fields use "
            f"{'PEFT' if 'lora_alpha' in data else 'this library'}'s names (e.g. "
            f"{'lora_alpha' if 'lora_alpha' in data else 'alpha'}); write every field in one "
            "naming.",
            UnknownFieldWarning,
            stacklevel=3,
        )
    if unknown:
        warnings.warn(
            f"{where}: unknown field(s) {unknown} for method {cls.method!r} are ignored; remove "
            "them, or check their names against the method's config.",
            UnknownFieldWarning,
            stacklevel=3,
        )


def misspelling_of(key: str, names: frozenset[str] | set[str]) -> str | None:
    """The known name ``key`` is a misspelling of, or ``None``.

    A misspelling differs from the name by case, ``-`` for ``_``, or one edit (a letter added,
    dropped, changed, or two neighbours swapped). Real field names of PEFT differ from each
    other by two edits or more (``use_dora`` / ``use_bdlora``), so a field a newer PEFT adds is
    reported as unknown, not as a misspelling.
    """
    norm = key.lower().replace("-", "_")
    for candidate in difflib.get_close_matches(norm, sorted(names), n=3, cutoff=0.6):
        if _edit_distance(norm, candidate) <= 1:
            return candidate
    return None


def _edit_distance(a: str, b: str) -> int:
    """Optimal-string-alignment distance: insertions, deletions, substitutions, swaps."""
    rows = [list(range(len(b) + 1))]
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


# The method configs used to live in this module; checkpoints and run configs written then
# name them ``core.adapters.config.LoraConfig`` etc. (the class path of their hyperparameters),
# so those names still resolve, to the classes' own modules.
_MOVED = {
    "LoraConfig": "lora",
    "PEFT_LORA_FIELDS": "lora",
    "SsfConfig": "ssf",
    "BottleneckConfig": "bottleneck",
    "CompacterConfig": "compacter",
    "LolduConfig": "loldu",
}


def __getattr__(name: str) -> Any:
    """Resolve the names that moved to the method modules (see ``_MOVED``)."""
    if name in _MOVED:
        return getattr(importlib.import_module(f".{_MOVED[name]}", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
