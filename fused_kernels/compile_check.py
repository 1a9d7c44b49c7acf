"""Lower every Triton kernel to a GPU binary without a GPU: a compile check for CI.

    TRITON_INTERPRET=0 python -m fused_kernels.compile_check [--json]

Triton's CPU interpreter, which runs the kernels' correctness tests on machines without a
GPU, executes them as NumPy and forgives what the real compiler refuses (dot shapes,
mismatched types across branches, constexpr misuse). Triton can compile a kernel all the
way to a cubin with no device present, so this compiles each kernel with the argument
types its launcher passes, for fp32, bf16 and fp16, for sm_80 and sm_90, and each tile
shape the fused LoRA GEMM autotunes over. It also reads the shared memory each binary
needs: a kernel that needs more than the architecture has would fail at launch. Sizes and
strides are taken as multiples of 16 and contiguous strides as 1, as at a launch on
typical shapes. It must run in a process where ``TRITON_INTERPRET`` is off: under the
interpreter, ``triton.jit`` builds functions that cannot be compiled.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from triton.compiler import CompiledKernel

TARGETS = {"sm80": 80, "sm90": 90}
DTYPES = ("fp32", "bf16", "fp16")
# Most shared memory one block may use, in bytes (A100 and H100 opt-in limits).
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
ELEMENT_SIZE = {"fp32": 4, "bf16": 2, "fp16": 2}
# The row-grouping arguments of the multi-adapter kernels (fused_kernels.multi_lora.Segments).
GROUP_POINTERS = {"order_ptr": "i64", "starts_ptr": "i64", "counts_ptr": "i64", "groups_ptr": "i64"}


@dataclass(frozen=True)
class Variant:
    """One kernel specialisation: pointer element types, fp32 scalars and constexprs."""

    name: str
    kernel: str  # "module:function" inside fused_kernels
    pointers: dict[str, str]
    constexprs: dict[str, object]
    floats: frozenset[str] = field(default_factory=frozenset)
    options: dict[str, int] = field(default_factory=dict)  # num_warps, num_stages
    # Stride arguments that are 1 in the layout this variant stands for. At launch Triton
    # turns an int argument equal to 1 into a constant and marks pointers and ints divisible
    # by 16 as such; those facts decide vector loads and software pipelining, so the check
    # compiles with them, as a launch on contiguous tensors would.
    unit: frozenset[str] = field(default_factory=frozenset)


# Unit strides of the fused LoRA GEMM's operands on contiguous tensors. Forward: x (M, in),
# Wt = W^T, L = h (M, r), R = B^T. Backward (dx): X = dy (M, out), Wt = W, L = u, R = A.
LORA_LAYOUTS = {
    "fwd": frozenset({"stride_xk", "stride_wk", "stride_lr", "stride_rr", "stride_mn",
                      "stride_on"}),
    "dx": frozenset({"stride_xk", "stride_wn", "stride_lr", "stride_rn", "stride_mn",
                     "stride_on"}),
}  # fmt: skip


def _lora_gemm(dt: str, extras: bool, blocks: dict, layout: str, **kwargs) -> Variant:
    pointers = ["x_ptr", "w_ptr", "l_ptr", "r_ptr", "bias_ptr", "mask_ptr", "out_ptr"]
    return Variant(
        unit=LORA_LAYOUTS[layout],
        kernel="lora_triton:_gemm_lowrank_kernel",
        pointers=dict.fromkeys(pointers, dt),
        constexprs={"HAS_BIAS": extras, "HAS_MASK": extras, "UPCAST": False,
                    "PRECISION": "ieee" if dt == "fp32" else "tf32", "BLOCK_R": 16, **blocks},
        floats=frozenset({"scale"}),
        **kwargs,
    )  # fmt: skip


def _segments(
    dt: str, name: str, kernel: str, pointers: dict, constexprs: dict, unit: set[str]
) -> Variant:
    return Variant(
        name, f"multi_lora_triton:{kernel}", {**pointers, **GROUP_POINTERS, "s_ptr": "fp32"},
        {"UPCAST": False, "PRECISION": "ieee" if dt == "fp32" else "tf32", **constexprs},
        unit=frozenset(unit),
    )  # fmt: skip


def variants() -> Iterator[Variant]:
    """Every specialisation the launchers in :mod:`fused_kernels` can request."""
    from .lora_triton import GROUP_M, INTERPRETER_BLOCKS, fitting_configs

    for dt in DTYPES:
        for extras in (False, True):
            label = "bias+mask" if extras else "plain"
            yield _lora_gemm(
                dt, extras, INTERPRETER_BLOCKS, "fwd", name=f"fused_lora_gemm[{dt},{label}]"
            )
        # The autotune candidates kept for the dtype: bf16 (the GPU dtype) in both layouts,
        # fp32 forward (fp16 has bf16's tiles).
        for layout in ("fwd", "dx") if dt == "bf16" else ("fwd",) if dt == "fp32" else ():
            for bm, bn, bk, warps, stages in fitting_configs(ELEMENT_SIZE[dt]):
                yield _lora_gemm(
                    dt, False, {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": GROUP_M},
                    layout,
                    name=f"fused_lora_gemm_tuned[{dt},{layout},{bm}x{bn}x{bk},w{warps},s{stages}]",
                    options={"num_warps": warps, "num_stages": stages},
                )  # fmt: skip
        for scaled in (False, True):
            for block_m in (16, 64):
                yield _segments(
                    dt, f"sgmv_shrink[{dt},{'scaled' if scaled else 'unscaled'},m{block_m}]",
                    "_shrink_kernel", {"x_ptr": dt, "w_ptr": dt, "out_ptr": "fp32"},
                    {"HAS_SCALE": scaled, "BLOCK_M": block_m, "BLOCK_R": 16, "BLOCK_I": 64},
                    {"stride_xi", "stride_wi"},
                )  # fmt: skip
        for accumulate in (False, True):
            for block_m in (16, 64):
                yield _segments(
                    dt, f"sgmv_expand[{dt},{'add' if accumulate else 'write'},m{block_m}]",
                    "_expand_kernel", {"h_ptr": "fp32", "w_ptr": dt, "out_ptr": dt},
                    {"ACCUMULATE": accumulate, "BLOCK_M": block_m, "BLOCK_R": 16, "BLOCK_O": 64},
                    {"stride_wo", "stride_on"},  # B stored (N, r, out), as AdapterBank does
                )  # fmt: skip
        for left, right, scaled, label in ((dt, "fp32", False, "dB"), ("fp32", dt, True, "dA")):
            yield Variant(
                f"segment_outer[{dt},{label}]",
                "multi_lora_triton:_segment_outer_kernel",
                {"left_ptr": left, "right_ptr": right, **GROUP_POINTERS, "s_ptr": "fp32",
                 "out_ptr": dt},
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


def compile_variant(variant: Variant, arch: int) -> CompiledKernel:
    """Lower one variant to a cubin for ``sm_<arch>``: Triton's compiled kernel (its
    ``metadata.shared`` is the shared memory it needs in bytes, ``asm`` its PTX and cubin).

    Raises on a compile error."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module, function = variant.kernel.split(":")
    kernel = getattr(importlib.import_module(f"fused_kernels.{module}"), function)
    signature, constexprs, aligned = {}, dict(variant.constexprs), []
    for index, name in enumerate(kernel.arg_names):
        if name in variant.constexprs or name in variant.unit:
            signature[name] = "constexpr"
            constexprs.setdefault(name, 1)
        elif name.endswith("_ptr"):
            signature[name] = "*" + variant.pointers[name]
            aligned.append(index)
        else:
            signature[name] = "fp32" if name in variant.floats else "i32"
            if name not in variant.floats:  # sizes and strides: multiples of 16, as usual
                aligned.append(index)
    attrs = {(index,): [["tt.divisibility", 16]] for index in aligned}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(
        source, target=GPUTarget("cuda", arch, 32), options=dict(variant.options)
    )
    if not compiled.asm.get("cubin"):
        raise RuntimeError(f"{variant.name} produced no cubin for sm_{arch}")
    return compiled


def fit_status(arch: int, shared: int) -> str:
    """``ok`` when ``shared`` bytes fit one block on ``sm_<arch>``; else the error."""
    if shared <= SHARED_LIMIT[arch]:
        return "ok"
    return (
        f"OutOfResources: needs {shared // 1024} KB of shared memory, sm_{arch} has "
        f"{SHARED_LIMIT[arch] // 1024} KB"
    )


def check_one(variant: Variant, arch: int) -> str:
    """``ok`` or the error of one variant on one architecture."""
    try:
        return fit_status(arch, int(compile_variant(variant, arch).metadata.shared))
    except Exception as error:  # report every failure, not only the first
        return f"{type(error).__name__}: {error}"


def run_all(jobs: int | None = None) -> dict[str, str]:
    """``{"<variant>@<target>": status}`` for every variant and target (see :func:`check_one`).

    Compiles in ``jobs`` processes (default: one per CPU); ptxas dominates the time.
    """
    from concurrent.futures import ProcessPoolExecutor

    work = [(v, target, arch) for v in variants() for target, arch in TARGETS.items()]
    with ProcessPoolExecutor(max_workers=jobs or os.cpu_count()) as pool:
        statuses = pool.map(check_one, [v for v, _, _ in work], [arch for _, _, arch in work])
        return {
            f"{v.name}@{target}": status
            for (v, target, _), status in zip(work, statuses, strict=True)
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    from triton import knobs

    if knobs.runtime.interpret:
        print("fused_kernels.compile_check: TRITON_INTERPRET is on; run with TRITON_INTERPRET=0.",
              file=sys.stderr)  # fmt: skip
        return 2
    results = run_all()
    if args.json:
        print(json.dumps(results))
    else:
        for name, status in results.items():
            print(f"ok   {name}" if status == "ok" else f"FAIL {name}  {status}")
    return 0 if all(v == "ok" for v in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
