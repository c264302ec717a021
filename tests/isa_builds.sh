#!/usr/bin/env bash
# The kernels' other instruction-set paths, built and tested on this machine.
#
# A build with -march=native runs only the code paths of the CPU it was built on. On a CPU with
# AVX-512 that leaves out the AVX2 assembly GEMM (csrc/ops/packed_matmul.c, compiled only
# without AVX-512) and, on any x86-64 CPU with AVX2, the scalar fallbacks of attention, the
# skinny matmul and dropout, which are what a MAGNET_PORTABLE=1 wheel runs. Users meet both. So
# this script builds magnet._C in a temporary copy of the tree twice more and runs the whole
# default test suite against each build:
#
#   haswell   MAGNET_MARCH=haswell: AVX2 and FMA, no AVX-512 (skipped on a CPU without AVX2,
#             which could not run it, and on a machine that is not x86-64)
#   portable  MAGNET_PORTABLE=1: the compiler's baseline for the machine, the scalar paths
#
# The CUDA backend is left out of both (MAGNET_CUDA=0): tests/cuda_emulated.sh covers it.
# Usage: tests/isa_builds.sh [extra pytest args]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/magnet-isa.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

if ! git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    echo "tests/isa_builds.sh copies the checkout's files (git ls-files): run it in a git checkout" >&2
    exit 2
fi

builds=(portable)
if [ "$(uname -m)" = x86_64 ] && grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; then
    builds=(haswell portable)
else
    echo "== haswell build skipped: this machine is not an x86-64 CPU with AVX2 and FMA"
fi

# The copy is not beside ../shared: point the tests at the shared data the checkout sees.
export MAGNET_SHARED_DATA="${MAGNET_SHARED_DATA:-$(dirname "$ROOT")/shared/data}"

for name in "${builds[@]}"; do
    dir="$WORK/$name"
    mkdir -p "$dir"
    cd "$ROOT"
    git ls-files -co --exclude-standard | tar -cf - -T - | tar -xf - -C "$dir"
    cd "$dir"
    echo "== $name build in $dir"
    if [ "$name" = haswell ]; then
        env MAGNET_CUDA=0 MAGNET_MARCH=haswell python setup.py -q build_ext --inplace -j 2 \
            >build.log 2>&1 || { tail -50 build.log; exit 1; }
    else
        env MAGNET_CUDA=0 MAGNET_PORTABLE=1 python setup.py -q build_ext --inplace -j 2 \
            >build.log 2>&1 || { tail -50 build.log; exit 1; }
    fi
    PYTHONPATH="$dir" python - "$dir" "$name" <<'PY'
import sys

import magnet
from magnet import _C

where, name = sys.argv[1], sys.argv[2]
assert magnet.__file__.startswith(where), magnet.__file__
# the packed AVX2 GEMM is the reason for the haswell build: make sure it is the one tested
assert _C.HAS_PACKED_MATMUL == (name == "haswell"), (name, _C.HAS_PACKED_MATMUL)
print(f"== {name} magnet at {magnet.__file__}, packed AVX2 GEMM: {bool(_C.HAS_PACKED_MATMUL)}")
PY
    echo "== $name: the default test suite"
    PYTHONPATH="$dir" python -m pytest -q -p no:cacheprovider "$@"
done
