#!/usr/bin/env bash
# Builds (tests/cuda/build_checks.sh MODE) and runs every CUDA check program; exits non-zero if
# any build or check fails. MODE = emulate | cuda. MAGNET_CHECK_TIMEOUT: seconds per program
# (default 600).
set -uo pipefail

MODE="${1:-}"
if [[ "$MODE" != emulate && "$MODE" != cuda ]]; then
    echo "usage: $0 emulate|cuda" >&2
    exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

"$ROOT/tests/cuda/build_checks.sh" "$MODE" || {
    echo "run_checks.sh: the $MODE build failed" >&2
    exit 1
}

failed=()
count=0
for src in tests/cuda/check_*.cu; do
    name="$(basename "$src" .cu)"
    prog="build/cuda-checks-$MODE/$name"
    count=$((count + 1))
    echo "== $name ($MODE)"
    start=$SECONDS
    if timeout "${MAGNET_CHECK_TIMEOUT:-600}" "$prog"; then
        echo "== $name: ok ($((SECONDS - start)) s)"
    else
        echo "== $name: FAILED (exit $?, $((SECONDS - start)) s)"
        failed+=("$name")
    fi
done

if ((${#failed[@]})); then
    echo "run_checks.sh: ${#failed[@]} of $count $MODE checks failed: ${failed[*]}" >&2
    exit 1
fi
echo "run_checks.sh: all $count $MODE checks passed"
