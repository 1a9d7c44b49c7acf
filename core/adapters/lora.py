"""LoRA: the method's config and its registration (rsLoRA, DoRA, PiSSA and CorDA are variants).

``LoraConfig`` reads and writes PEFT's ``adapter_config.json`` fields, so adapters move
between this library and PEFT. Its ``use_rslora``, ``use_dora`` and ``init`` fields choose
the variants the unit runs with (:mod:`~core.adapters.lora_variants`,
:mod:`~core.adapters.lora_init`); the unit is :class:`~core.adapters.lora_unit.LoraUnit`, and
an ``AdapterBank`` stacks plain LoRA adapters in :class:`~core.adapters.lora_stack.LoraStackUnit`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from .config import PEFT_BASE_FIELDS, AdapterConfig, require_positive
from .layer import layer_dims, weight_matrix
from .lora_init import LORA_INITS, LayerStart, LoraInit
from .lora_stack import LoraStackUnit, can_share_stack, supports_lora_stack
from .lora_unit import LoraUnit
from .lora_variants import DORA, LORA_SCALE, PLAIN, RSLORA_SCALE, LoraVariant, ScaleRule
from .registry import BuildContext, Stacking, register_method
from .targeting import is_linear_like

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
    "astra_config",
    "kasa_config",
    "ensure_weight_tying",
}


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

    INITS: ClassVar[tuple[str, ...]] = tuple(LORA_INITS)

    # ------------------------------------------------------------------ variants
    @property
    def variant(self) -> LoraVariant:
        """How the factors change the layer: DoRA (``use_dora``) or plain LoRA."""
        return DORA if self.use_dora else PLAIN

    @property
    def scale_rule(self) -> ScaleRule:
        """How alpha and r set the scale: rsLoRA (``use_rslora``) or LoRA."""
        return RSLORA_SCALE if self.use_rslora else LORA_SCALE

    @property
    def init_variant(self) -> LoraInit:
        """How the factors start (``init``)."""
        return LORA_INITS[self.init]

    @property
    def needs_calibration(self) -> bool:
        return self.init_variant.needs_calibration

    @property
    def rewrites_base(self) -> bool:
        return self.init_variant.rewrites_base

    @property
    def stackable(self) -> bool:
        return self.variant.stackable

    def describe(self) -> str:
        return f"LoRA init={self.init!r}"

    # ------------------------------------------------------------------ values
    def validate(self) -> None:
        require_positive(self.r, "r", "LoRA")
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
        if self.use_dora and self.rewrites_base:
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

    def scaling_for(self, module_name: str) -> tuple[int, float]:
        """The (r, s) for one module: its rank and the scale of s * B A."""
        r, alpha = self.rank_for(module_name)
        return r, self.scale_rule.scaling(alpha, r)

    # ------------------------------------------------------------------ JSON (PEFT names)
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

    def saved_json_dict(self, notes: dict[str, Any]) -> dict[str, Any]:
        """PiSSA/CorDA units save a rank-2r plain LoRA on the original W0 (``notes`` says
        ``converted_svd_init``): r and ranks doubled, alpha scaled to keep s, init plain."""
        json_dict = self.to_json_dict()
        if not notes.get("converted_svd_init"):
            return json_dict
        factor = self.scale_rule.alpha_factor(2)
        json_dict["r"] = 2 * self.r
        json_dict["lora_alpha"] = self.alpha * factor
        json_dict["rank_pattern"] = {k: 2 * v for k, v in self.rank_pattern.items()}
        json_dict["alpha_pattern"] = {k: v * factor for k, v in self.alpha_pattern.items()}
        json_dict["init_lora_weights"] = True
        json_dict["corda_config"] = None
        return json_dict

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
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", module_name):
            return value
    return default


# ----------------------------------------------------------------------------- the method
def supports_lora(module: nn.Module) -> bool:
    """Linear, GPT-2 Conv1D, or an ungrouped Conv2d."""
    return is_linear_like(module) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def build_lora_unit(
    base: nn.Module, module_name: str, config: LoraConfig, context: BuildContext
) -> LoraUnit:
    """Create the LoRA unit for one layer with the config's variants and initialisation.

    With ``context.structure_only`` an SVD-initialised unit gets its tensors without the
    decomposition (W0 untouched, initial factors zero): the shape a checkpoint that holds
    the initialised and trained state is loaded into.
    """
    r, scaling = config.scaling_for(module_name)
    out_f, in_f = layer_dims(base)
    if r > min(out_f, in_f):
        raise ValueError(
            f"LoRA rank r={r} is larger than layer {module_name!r} allows "
            f"(out_features={out_f}, in_features={in_f}); use r <= {min(out_f, in_f)} "
            "or leave this layer out of target_modules (or set rank_pattern for it)."
        )
    init = config.init_variant
    unit = LoraUnit(base, r, scaling, config.dropout, config.variant, init)
    if context.structure_only and init.rewrites_base:
        unit.keep_initial_factors_shape()
        return unit
    layer = LayerStart(
        base,
        weight_matrix(base).detach(),
        module_name,
        r,
        scaling,
        config,
        context.covariances.get(module_name),
    )
    factors = init.factors(layer)
    if factors is not None:
        unit.set_factors(base, *factors)
    return unit


register_method(
    LoraConfig,
    supports=supports_lora,
    build=build_lora_unit,
    stacking=Stacking(supports=supports_lora_stack, build=LoraStackUnit, accepts=can_share_stack),
)
