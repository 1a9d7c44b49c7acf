#!/usr/bin/env bash
# Everything the kernels issue asks of a GPU, in one call (device time is scarce):
# the machine, the kernel tests on the GPU (Triton compiled, not interpreted), the
# compile check and the GPU sweep. Logs and the sweep's CSV go to $OUT (the device tool's
# return folder) or, elsewhere, to bench/results/gpu.
#
#     bash bench/gpu_session.sh            # from the repository root
#
# Needs only torch, triton, transformers and pytest, which the lent machines' Python has.
# Exits non-zero when a step fails; later steps still run, so one call tells everything.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/results/gpu}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
python="${PYTHON:-python3}"
status=0

step() {  # step NAME COMMAND...: run it, keep its log, remember a failure
    local name="$1"
    shift
    echo "== $name: $*"
    "$@" 2>&1 | tee "$out/$name.log" || status=1
}

if ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)"; then
    echo "gpu_session: no CUDA device visible to $python; nothing to measure." >&2
    exit 3
fi
step machine nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
step tests "$python" -m pytest -q -p no:cacheprovider tests/fused_kernels
step compile_check "$python" -m fused_kernels.compile_check
step sweep "$python" -m bench.gpu_kernels --csv "$out/gpu_kernels.csv"
exit "$status"
