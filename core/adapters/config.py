"""Adapter configuration dataclasses and the string registry that lets a YAML name a method.

Every method has one config dataclass. Configs know how to turn themselves into the
``adapter_config.json`` written next to the weights (Hugging Face PEFT field names for
LoRA, the same layout with our own ``peft_type`` for methods PEFT does not ship) and back.
"""

from __future__ import annotations

import dataclasses
import difflib
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

ADAPTER_REGISTRY: dict[str, type[AdapterConfig]] = {}

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
# Fields of PEFT's ``LoraConfig`` (peft 0.21). ``LoraConfig.from_json_dict`` reads r,
# lora_alpha, lora_dropout, target_modules, modules_to_save, init_lora_weights, use_rslora,
# use_dora, rank_pattern, alpha_pattern and corda_config, refuses unsupported values of bias,
# lora_bias and layers_to_transform, and knowingly ignores the rest. The tests check this list
# against the installed PEFT, so a PEFT release with new fields shows up there.
PEFT_LORA_FIELDS = PEFT_BASE_FIELDS | {
    "r",
    "target_modules",
    "exclude_modules",
    "lora_alpha",
    "lora_dropout",
    "fan_in_fan_out",
    "bias",
    "use_rslora",
    "modules_to_save",
    "init_lora_weights",
    "layers_to_transform",
    "layers_pattern",
    "rank_pattern",
    "alpha_pattern",
    "megatron_config",
    "megatron_core",
    "trainable_token_indices",
    "loftq_config",
    "eva_config",
    "corda_config",
    "lora_ga_config",
    "use_dora",
    "velora_config",
    "alora_invocation_tokens",
    "use_qalora",
    "qalora_group_size",
    "monteclora_config",
    "layer_replication",
    "runtime_config",
    "lora_bias",
    "target_parameters",
    "use_bdlora",
    "arrow_config",
    "kasa_config",
    "ensure_weight_tying",
}


class UnknownFieldWarning(UserWarning):
    """An adapter config field the reader does not know; it is ignored."""


def register_adapter(cls: type[AdapterConfig]) -> type[AdapterConfig]:
    """Class decorator adding a config class to :data:`ADAPTER_REGISTRY` under its ``method``."""
    ADAPTER_REGISTRY[cls.method] = cls
    return cls


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
    """

    method: ClassVar[str] = ""
    peft_type: ClassVar[str] = ""
    target_modules: list[str] | str | None = None
    modules_to_save: list[str] | None = None

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field and the fix when a value is out of range."""

    def to_json_dict(self) -> dict[str, Any]:
        """The ``adapter_config.json`` content for this config."""
        data = dataclasses.asdict(self)
        data["peft_type"] = self.peft_type
        data["method"] = self.method
        return data

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


def get_config_class(method: str) -> type[AdapterConfig]:
    """Look a method up by name (case-insensitive), with close matches in the error."""
    key = method.lower()
    if key in ADAPTER_REGISTRY:
        return ADAPTER_REGISTRY[key]
    by_peft_type = {c.peft_type.lower(): c for c in ADAPTER_REGISTRY.values()}
    if key in by_peft_type:
        return by_peft_type[key]
    close = difflib.get_close_matches(key, sorted(ADAPTER_REGISTRY), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"Unknown adapter method {method!r}.{hint} "
        f"Known methods: {', '.join(sorted(ADAPTER_REGISTRY))}."
    )


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
            f"(known: {', '.join(sorted(ADAPTER_REGISTRY))})."
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


def _positive(value: float, name: str, method: str) -> None:
    if value <= 0:
        raise ValueError(f"{method} config: {name}={value!r} must be > 0.")


@register_adapter
@dataclass
class LoraConfig(AdapterConfig):
    """LoRA: y = W0 x + s * B A dropout(x), with s = alpha / r (or alpha / sqrt(r) for rsLoRA).

    ``init``: ``"default"`` (PEFT's ``init_lora_weights=True``: Kaiming-uniform A, zero B),
    ``"gaussian"`` (A ~ N(0, 1/r), zero B), ``"pissa"`` (top-r singular triplets of W0 in the
    adapter, the residual frozen) or ``"corda"`` (context-oriented decomposition from
    calibration batches; ``corda_mode="ipm"`` trains the largest r components, ``"kpm"`` the
    smallest). ``use_dora`` adds DoRA's trainable per-output magnitude.
    ``rank_pattern`` / ``alpha_pattern`` override r / alpha for modules whose name matches a key
    (PEFT's rule: the key matches the end of the module name).
    """

    method: ClassVar[str] = "lora"
    peft_type: ClassVar[str] = "LORA"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    init: str = "default"
    use_rslora: bool = False
    use_dora: bool = False
    corda_mode: str = "ipm"
    corda_damping: float = 0.01
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)

    INITS: ClassVar[tuple[str, ...]] = ("default", "gaussian", "pissa", "corda")

    def validate(self) -> None:
        _positive(self.r, "r", "LoRA")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA config: dropout={self.dropout!r} must be in [0, 1).")
        if self.init not in self.INITS:
            raise ValueError(
                f"LoRA config: init={self.init!r} is not one of {', '.join(self.INITS)}."
            )
        if self.corda_mode not in ("ipm", "kpm"):
            raise ValueError(
                f"LoRA config: corda_mode={self.corda_mode!r} must be 'ipm' "
                "(instruction-previewed) or 'kpm' (knowledge-preserved)."
            )
        if self.use_dora and self.init in ("pissa", "corda"):
            raise ValueError(
                f"LoRA config: use_dora=True cannot be combined with init={self.init!r}; "
                "pick one of them."
            )

    def rank_for(self, module_name: str) -> tuple[int, float]:
        """The (r, alpha) for one module after applying rank/alpha patterns."""
        return (
            _pattern_lookup(self.rank_pattern, module_name, self.r),
            _pattern_lookup(self.alpha_pattern, module_name, self.alpha),
        )

    def to_json_dict(self) -> dict[str, Any]:
        init: bool | str = True if self.init == "default" else self.init
        return {
            "peft_type": self.peft_type,
            "task_type": None,
            "base_model_name_or_path": None,
            "revision": None,
            "inference_mode": True,
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": self.target_modules,
            "exclude_modules": None,
            "fan_in_fan_out": False,
            "bias": "none",
            "use_rslora": self.use_rslora,
            "use_dora": self.use_dora,
            "init_lora_weights": init,
            "modules_to_save": self.modules_to_save,
            "layers_to_transform": None,
            "layers_pattern": None,
            "rank_pattern": dict(self.rank_pattern),
            "alpha_pattern": dict(self.alpha_pattern),
            "lora_bias": False,
            "corda_config": {"corda_method": self.corda_mode} if self.init == "corda" else None,
        }

    @classmethod
    def fields_read(cls, data: dict[str, Any]) -> frozenset[str]:
        """PEFT's LoRA fields for a PEFT-style dict (it has ``lora_alpha``), else ours."""
        if "lora_alpha" in data:
            return PEFT_LORA_FIELDS | {"method"}
        return super().fields_read(data)

    @classmethod
    def field_names(cls) -> frozenset[str]:
        """This library's LoRA field names and PEFT's."""
        return super().fields_read({}) | PEFT_LORA_FIELDS

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> LoraConfig:
        if "lora_alpha" not in data:  # our own field names
            return super().from_json_dict(data)  # type: ignore[return-value]
        unsupported = {
            "bias": "none",
            "lora_bias": False,
            "layers_to_transform": None,
        }
        for key, expected in unsupported.items():
            if data.get(key, expected) not in (expected, [], {}):
                raise ValueError(
                    f"adapter_config.json field {key}={data[key]!r} is not supported; "
                    f"re-save the adapter with {key}={expected!r}."
                )
        init = data.get("init_lora_weights", True)
        init_name = "default" if init is True else str(init)
        corda = data.get("corda_config") or {}
        return cls(
            target_modules=data.get("target_modules"),
            modules_to_save=data.get("modules_to_save"),
            r=int(data["r"]),
            alpha=float(data["lora_alpha"]),
            dropout=float(data.get("lora_dropout", 0.0)),
            init=init_name,
            use_rslora=bool(data.get("use_rslora", False)),
            use_dora=bool(data.get("use_dora", False)),
            corda_mode=corda.get("corda_method", "ipm"),
            rank_pattern=dict(data.get("rank_pattern") or {}),
            alpha_pattern=dict(data.get("alpha_pattern") or {}),
        )


def _pattern_lookup(pattern: dict[str, Any], module_name: str, default: Any) -> Any:
    import re

    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", module_name):
            return value
    return default


@register_adapter
@dataclass
class SsfConfig(AdapterConfig):
    """SSF: per-channel ``gamma * out + beta`` after each target op, mergeable into it.

    ``init="identity"`` (gamma = 1, beta = 0) keeps the model unchanged at the start;
    ``init="paper"`` draws gamma ~ N(1, std) and beta ~ N(0, std) as in the SSF paper.
    """

    method: ClassVar[str] = "ssf"
    peft_type: ClassVar[str] = "SSF"
    init: str = "identity"
    init_std: float = 0.02

    def validate(self) -> None:
        if self.init not in ("identity", "paper"):
            raise ValueError(f"SSF config: init={self.init!r} must be 'identity' or 'paper'.")


@register_adapter
@dataclass
class BottleneckConfig(AdapterConfig):
    """Houlsby/Pfeiffer bottleneck: ``h + up(act(down(norm(h))))`` after each target module.

    The up projection starts at zero, so the model is unchanged at the start.
    """

    method: ClassVar[str] = "bottleneck"
    peft_type: ClassVar[str] = "BOTTLENECK"
    bottleneck_dim: int = 16
    activation: str = "gelu"
    use_norm: bool = False
    dropout: float = 0.0

    def validate(self) -> None:
        _positive(self.bottleneck_dim, "bottleneck_dim", "Bottleneck")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"Bottleneck config: activation={self.activation!r} is not one of "
                f"{', '.join(ACTIVATIONS)}."
            )


@register_adapter
@dataclass
class CompacterConfig(AdapterConfig):
    """Compacter: a bottleneck whose projections are sums of Kronecker products.

    W = sum_i A_i (x) B_i with the n x n "rules" A_i shared by every adapted layer and the
    B_i = s_i t_i^T rank-one and per layer. Feature and bottleneck sizes must divide by n.
    """

    method: ClassVar[str] = "compacter"
    peft_type: ClassVar[str] = "COMPACTER"
    bottleneck_dim: int = 16
    phm_dim: int = 4
    activation: str = "gelu"

    def validate(self) -> None:
        _positive(self.bottleneck_dim, "bottleneck_dim", "Compacter")
        _positive(self.phm_dim, "phm_dim", "Compacter")
        if self.bottleneck_dim % self.phm_dim:
            raise ValueError(
                f"Compacter config: bottleneck_dim={self.bottleneck_dim} must be divisible by "
                f"phm_dim={self.phm_dim}."
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"Compacter config: activation={self.activation!r} is not one of "
                f"{', '.join(ACTIVATIONS)}."
            )


@register_adapter
@dataclass
class LolduConfig(AdapterConfig):
    """LoLDU: pivoted LU of W0 = P L D U; train only r diagonal values and one scale."""

    method: ClassVar[str] = "loldu"
    peft_type: ClassVar[str] = "LOLDU"
    r: int = 8

    def validate(self) -> None:
        _positive(self.r, "r", "LoLDU")


ACTIVATIONS = ("gelu", "relu", "silu", "tanh", "identity")
