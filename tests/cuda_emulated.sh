#!/usr/bin/env bash
# The CUDA backend through the Python API, on a machine without a GPU: builds magnet._C with
# MAGNET_CUDA=emulate (the backend's .cu files compiled as C++ against the CPU emulator of
# csrc/backend/cuda/emulate, which runs every kernel block by block with coroutine threads) in
# a temporary copy of the tree, so the normal in-place build is untouched, then runs the model
# level GPU tests against it (tests/test_cuda_model.py: logits, gradients, adapt curve,
# generation, infilling, embeddings, moving between devices; tests/test_cuda_api.py: the rest of
# the public API on a GPU model against the CPU). The per-op check programs run in
# the default test suite (tests/test_cuda_checks.py). Usage: tests/cuda_emulated.sh [pytest args]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/magnet-cuda-emulated.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

cd "$ROOT"
git ls-files -co --exclude-standard | tar -cf - -T - | tar -xf - -C "$WORK"
cd "$WORK"
echo "== emulated-CUDA build in $WORK"
MAGNET_CUDA=emulate python setup.py -q build_ext --inplace -j 2 >build.log 2>&1 \
    || { tail -50 build.log; exit 1; }
PYTHONPATH="$WORK" python -c "import magnet; assert magnet.cuda_is_available(), \
magnet.device.cuda_unavailable_reason(); print('device:', magnet._C.cuda_device_count())"
PYTHONPATH="$WORK" python -m pytest -q -p no:cacheprovider tests/test_cuda_model.py \
    tests/test_cuda_api.py "$@"
