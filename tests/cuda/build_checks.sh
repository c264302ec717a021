#!/usr/bin/env bash
# Builds every tests/cuda/check_*.cu into build/cuda-checks-MODE/ as a standalone program linked
# with the whole C core and the CUDA backend.
#   MODE = emulate: the .cu files compiled as C++ by the host compiler with the CPU emulator
#                   (csrc/backend/cuda/emulate); runs anywhere.
#   MODE = cuda:    the .cu files compiled by nvcc, linked with the static CUDA runtime; needs a
#                   GPU to run. MAGNET_CUDA_ARCH overrides the nvcc target flags (default: the
#                   GPU present, else sm_80 and sm_90).
# OpenBLAS comes from the scipy_openblas32 Python package, as in setup.py ($PYTHON, default
# python3). Incremental (make, with header dependencies); parallel over the machine's cores.
set -euo pipefail

MODE="${1:-}"
if [[ "$MODE" != emulate && "$MODE" != cuda ]]; then
    echo "usage: $0 emulate|cuda" >&2
    exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"

read -r BLAS_INC BLAS_LIB_DIR BLAS_LIB < <("$PYTHON" -c '
import scipy_openblas32 as s
print(s.get_include_dir(), s.get_lib_dir(), s.get_library())') || {
    echo "build_checks.sh: the scipy_openblas32 package is missing (pip install scipy-openblas32)" >&2
    exit 1
}

ARGS=()
if [[ "$MODE" == cuda ]]; then
    NVCC="$(command -v nvcc || true)"
    for dir in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda; do
        if [[ -z "$NVCC" && -n "$dir" && -x "$dir/bin/nvcc" ]]; then NVCC="$dir/bin/nvcc"; fi
    done
    if [[ -z "$NVCC" ]]; then
        echo "build_checks.sh: nvcc not found (PATH, \$CUDA_HOME/bin, /usr/local/cuda/bin)" >&2
        exit 1
    fi
    # nvcc may be a wrapper script; its dry run names the toolkit it belongs to.
    CUDA_ROOT="$("$NVCC" --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n1)"
    [[ -n "$CUDA_ROOT" ]] || CUDA_ROOT="$(dirname "$NVCC")/.."
    CUDA_LIB_DIR=""
    for dir in "$CUDA_ROOT/targets/$(uname -m)-linux/lib" "$CUDA_ROOT/lib64" "$CUDA_ROOT/lib"; do
        if [[ -z "$CUDA_LIB_DIR" && -f "$dir/libcudart_static.a" ]]; then CUDA_LIB_DIR="$dir"; fi
    done
    if [[ -z "$CUDA_LIB_DIR" ]]; then
        echo "build_checks.sh: libcudart_static.a not found under $CUDA_ROOT" >&2
        exit 1
    fi
    if [[ -n "${MAGNET_CUDA_ARCH:-}" ]]; then
        ARCH="$MAGNET_CUDA_ARCH"
    elif nvidia-smi -L >/dev/null 2>&1; then
        ARCH="-arch=native"
    else
        ARCH="-gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90"
    fi
    ARGS+=("NVCC=$NVCC" "CUDA_LIB_DIR=$CUDA_LIB_DIR" "CUDA_ARCH_FLAGS=$ARCH")
fi

JOBS="$(nproc 2>/dev/null || echo 2)"
exec make --no-print-directory -s -j"$JOBS" -f tests/cuda/checks.mk MODE="$MODE" \
    OUT="build/cuda-checks-$MODE" BLAS_INC="$BLAS_INC" BLAS_LIB_DIR="$BLAS_LIB_DIR" \
    BLAS_LIB="$BLAS_LIB" "${ARGS[@]}"
