"""Every Triton kernel compiles to a real GPU binary (sm_80, sm_90), checked without a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

SCRIPT = """
import json
from dataclasses import replace
from fused_kernels import compile_check

results = compile_check.run_all()
# Negative control: tl.dot needs tiles of at least 16; 8 must be refused by the compiler.
bad = next(v for v in compile_check.variants() if v.name.startswith("segment_outer"))
bad = replace(bad, constexprs={**bad.constexprs, "BLOCK_M": 8})
try:
    compile_check.compile_variant(bad, 90)
    control = "compiled"
except Exception as error:
    control = type(error).__name__
# The bf16 GEMM must reach the tensor cores and pipeline its loads through shared memory.
name = "fused_lora_gemm_tuned[bf16,fwd,128x128x64"
tuned = next(v for v in compile_check.variants() if v.name.startswith(name))
binaries = {arch: compile_check.compile_variant(tuned, arch) for arch in (80, 90)}
gemm = {
    "sm90_wgmma": "wgmma" in binaries[90].asm["ptx"],
    "sm80_mma": "mma.sync" in binaries[80].asm["ptx"],
    "sm80_cp_async": "cp.async" in binaries[80].asm["ptx"],
    "shared": {arch: int(b.metadata.shared) for arch, b in binaries.items()},
    "stages": tuned.options["num_stages"],
}
print(json.dumps({"results": results, "control": control, "gemm": gemm}))
"""


@pytest.fixture(scope="module")
def report() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "0"}  # code generation needs compiler mode
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_kernel_variant_compiles_for_sm80_and_sm90(report) -> None:
    results = report["results"]
    kernels = {name.split("[")[0] for name in results}
    assert kernels == {
        "fused_lora_gemm", "fused_lora_gemm_tuned", "sgmv_shrink", "sgmv_expand",
        "segment_outer", "cross_entropy_rows",
    }  # fmt: skip
    assert {name.rsplit("@", 1)[1] for name in results} == {"sm80", "sm90"}
    failed = {name: status for name, status in results.items() if status != "ok"}
    assert not failed, failed


def test_every_kept_autotune_candidate_is_compiled() -> None:
    from fused_kernels.compile_check import variants
    from fused_kernels.lora_triton import GPU_CONFIGS, fitting_configs

    tuned = [v.name for v in variants() if v.name.startswith("fused_lora_gemm_tuned")]
    assert len(tuned) == 2 * len(fitting_configs(2)) + len(fitting_configs(4))
    assert len(fitting_configs(2)) == len(GPU_CONFIGS)  # every candidate fits in 16 bits
    assert 0 < len(fitting_configs(4)) < len(GPU_CONFIGS)  # fp32 drops the largest tiles


def test_bf16_gemm_uses_tensor_cores_and_pipelines_its_loads(report) -> None:
    gemm = report["gemm"]
    assert gemm["sm90_wgmma"] and gemm["sm80_mma"] and gemm["sm80_cp_async"], gemm
    # 128x128x64 bf16 tiles are 32 KB a stage: more than one stage is buffered.
    assert all(shared >= 2 * 32 * 1024 for shared in gemm["shared"].values()), gemm


def test_the_check_rejects_a_kernel_the_compiler_refuses(report) -> None:
    assert report["control"] == "CompilationError"


def test_refuses_to_run_under_the_interpreter() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "fused_kernels.compile_check"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2 and "TRITON_INTERPRET=0" in proc.stderr
