"""Lower every Triton kernel to a GPU binary without a GPU: a compile check for CI.

    TRITON_INTERPRET=0 python -m kernels.compile_check [--json]

Triton's CPU interpreter, which runs the kernels' correctness tests on machines without a
GPU, executes them as NumPy and forgives what the real compiler refuses (dot shapes,
mismatched types across branches, constexpr misuse). Triton can compile a kernel all the
way to a cubin with no device present, so this compiles each kernel with the argument
types its launcher passes, for fp32, bf16 and fp16, for sm_80 and sm_90. It must run in a process
where ``TRITON_INTERPRET`` is off: under the interpreter, ``triton.jit`` builds functions
that cannot be compiled.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

TARGETS = {"sm80": 80, "sm90": 90}
DTYPES = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Variant:
    """One kernel specialisation: pointer element types, fp32 scalars and constexprs."""

    name: str
    kernel: str  # "module:function" inside kernels
    pointers: dict[str, str]
    constexprs: dict[str, object]
    floats: frozenset[str] = field(default_factory=frozenset)


def variants() -> Iterator[Variant]:
    """Every specialisation the launchers in :mod:`kernels` can request."""
    for dt in DTYPES:
        for extras in (False, True):
            yield Variant(
                f"fused_lora_gemm[{dt},{'bias+mask' if extras else 'plain'}]",
                "lora_triton:_gemm_lowrank_kernel",
                dict.fromkeys(
                    ["x_ptr", "w_ptr", "l_ptr", "r_ptr", "bias_ptr", "mask_ptr", "out_ptr"], dt
                ),
                {"HAS_BIAS": extras, "HAS_MASK": extras, "UPCAST": False,
                 "PRECISION": "ieee" if dt == "fp32" else "tf32",
                 "BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "BLOCK_R": 16},
                frozenset({"scale"}),
            )  # fmt: skip
        yield Variant(
            f"bgmv[{dt}]",
            "multi_lora_triton:_bgmv_kernel",
            {"x_ptr": dt, "ids_ptr": "i64", "a_ptr": dt, "b_ptr": dt, "s_ptr": "fp32",
             "out_ptr": dt},
            {"BLOCK_R": 16, "BLOCK_I": 64, "BLOCK_O": 64},
        )  # fmt: skip
        for scaled in (False, True):
            yield Variant(
                f"bgmv_shrink[{dt},{'scaled' if scaled else 'unscaled'}]",
                "multi_lora_triton:_shrink_kernel",
                {"x_ptr": dt, "ids_ptr": "i64", "w_ptr": dt, "s_ptr": "fp32", "out_ptr": "fp32"},
                {"HAS_SCALE": scaled, "BLOCK_R": 16, "BLOCK_I": 64},
            )
        yield Variant(
            f"bgmv_expand[{dt}]",
            "multi_lora_triton:_expand_kernel",
            {"h_ptr": "fp32", "ids_ptr": "i64", "w_ptr": dt, "s_ptr": "fp32", "out_ptr": dt},
            {"BLOCK_R": 16, "BLOCK_O": 64},
        )
        for left, right, scaled, label in ((dt, "fp32", False, "dB"), ("fp32", dt, True, "dA")):
            yield Variant(
                f"segment_outer[{dt},{label}]",
                "multi_lora_triton:_segment_outer_kernel",
                {"left_ptr": left, "right_ptr": right, "order_ptr": "i64", "starts_ptr": "i64",
                 "counts_ptr": "i64", "groups_ptr": "i64", "s_ptr": "fp32", "out_ptr": dt},
                {"HAS_SCALE": scaled, "BLOCK_M": 16, "BLOCK_P": 64, "BLOCK_Q": 16},
            )  # fmt: skip
    for row_scale in (False, True):
        yield Variant(
            f"cross_entropy_rows[{'per-row' if row_scale else 'scalar'} scale]",
            "cross_entropy_triton:_ce_rows_kernel",
            {"logits_ptr": "fp32", "labels_ptr": "i64", "loss_ptr": "fp32", "scale_ptr": "fp32"},
            {"HAS_ROW_SCALE": row_scale, "WRITE_GRAD": True, "BLOCK_V": 4096},
            frozenset({"smoothing", "scalar_scale"}),
        )


def compile_variant(variant: Variant, arch: int) -> None:
    """Lower one variant to a cubin for ``sm_<arch>``; raises on a compile error."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module, function = variant.kernel.split(":")
    kernel = getattr(importlib.import_module(f"kernels.{module}"), function)
    signature = {}
    for name in kernel.arg_names:
        if name in variant.constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*" + variant.pointers[name]
        else:
            signature[name] = "fp32" if name in variant.floats else "i32"
    source = ASTSource(fn=kernel, signature=signature, constexprs=dict(variant.constexprs))
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32))
    if not compiled.asm.get("cubin"):
        raise RuntimeError(f"{variant.name} produced no cubin for sm_{arch}")


def run_all() -> dict[str, str]:
    """``{"<variant>@<target>": "ok" or the error}`` for every variant and target."""
    results = {}
    for variant in variants():
        for target, arch in TARGETS.items():
            try:
                compile_variant(variant, arch)
                results[f"{variant.name}@{target}"] = "ok"
            except Exception as error:  # report every failure, not only the first
                results[f"{variant.name}@{target}"] = f"{type(error).__name__}: {error}"
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    from triton import knobs

    if knobs.runtime.interpret:
        print("kernels.compile_check: TRITON_INTERPRET is on; run with TRITON_INTERPRET=0.",
              file=sys.stderr)  # fmt: skip
        return 2
    results = run_all()
    if args.json:
        print(json.dumps(results))
    else:
        for name, status in results.items():
            print(
                f"{'ok  ' if status == 'ok' else 'FAIL'} {name}"
                + ("" if status == "ok" else f"  {status}")
            )
    return 0 if all(v == "ok" for v in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
