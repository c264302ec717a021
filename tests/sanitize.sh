#!/usr/bin/env bash
# Sanitizer run (issue 7): builds magnet._C with AddressSanitizer + UndefinedBehaviorSanitizer
# (MAGNET_SANITIZE=1, and MAGNET_DEBUG=1 for -O0 -g: a faster build and exact stack traces) in a
# temporary copy of the tree, so the normal in-place build is untouched, then runs under it:
#
#   1. the sanitizer subset of the test suite, which covers every op and every loader:
#        tests/test_ops_grad.py        every op, forward and backward (op_* entry points)
#        tests/test_train_grad.py      the trainer (micro_step, losses, AdamW) end to end
#        tests/test_safetensors.py     safetensors reader, incl. its random mutations
#        tests/test_gguf.py            GGUF reader and every dequantizer
#        tests/test_llama2c.py         llama2.c checkpoint + tokenizer readers
#        tests/test_fuzz_formats.py    1,000 seeded mutations per format (all four readers + HF)
#        tests/test_api_errors.py      bad shapes / dtypes / values at every public entry point
#        tests/test_generate.py        Generator (KV cache, sampling)
#        tests/test_embed.py           _C.embed and pooling
#        tests/test_resource_limits.py MemoryError before allocating
#        tests/fuzz/test_regressions.py every crasher the fuzz harnesses found
#        tests/test_binding_guards.py  magnet._C misused directly (re-init, races, limits)
#        tests/test_allocation_failures.py every C allocation of the main calls failing in turn
#                                      (the debug build's _C._fail_allocation_after)
#   2. a short run of every atheris harness in tests/fuzz/ (FUZZ_SECONDS each, default 30;
#      0 skips it; skipped when atheris is not installed).
#
# Any ASan / UBSan report aborts the process (halt_on_error), so the script exits non-zero.
# Leak checking is tests/leak_check.py (valgrind), run at the end when valgrind is installed
# (LEAK_CHECK=0 skips it). Usage: tests/sanitize.sh [extra pytest args]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
FUZZ_SECONDS="${FUZZ_SECONDS:-30}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/magnet-sanitize.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

cd "$ROOT"
git ls-files -co --exclude-standard | tar -cf - -T - | tar -xf - -C "$WORK"
cd "$WORK"
echo "== sanitizer build in $WORK"
MAGNET_SANITIZE=1 MAGNET_DEBUG=1 python setup.py -q build_ext --inplace -j 2 >build.log 2>&1 \
    || { tail -50 build.log; exit 1; }

LIBASAN="$(gcc -print-file-name=libasan.so)"
export LD_PRELOAD="$LIBASAN"
# detect_leaks=0: CPython's own allocations would drown LeakSanitizer (leaks: tests/leak_check.py)
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export PYTHONPATH="$WORK${PYTHONPATH:+:$PYTHONPATH}"
# the tests look for ../shared/data beside the tree they run from, which is $WORK here
export MAGNET_SHARED_DATA="${MAGNET_SHARED_DATA:-$(dirname "$ROOT")/shared/data}"
export OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=1
python - <<PY
import magnet, sys
assert magnet.__file__.startswith("$WORK"), magnet.__file__
print("== sanitized magnet at", magnet.__file__)
PY

echo "== sanitizer test subset"
python -m pytest -q -p no:cacheprovider -x \
    tests/test_ops_grad.py tests/test_train_grad.py tests/test_safetensors.py \
    tests/test_gguf.py tests/test_llama2c.py tests/test_fuzz_formats.py tests/test_api_errors.py \
    tests/test_generate.py tests/test_embed.py tests/test_resource_limits.py \
    tests/fuzz/test_regressions.py tests/test_binding_guards.py tests/test_allocation_failures.py \
    "$@"

if [ "$FUZZ_SECONDS" != 0 ] && python -c "import atheris" 2>/dev/null; then
    for h in tests/fuzz/fuzz_*.py; do
        name="$(basename "$h" .py)"; name="${name#fuzz_}"
        echo "== fuzz $name for ${FUZZ_SECONDS}s"
        mkdir -p "$WORK/fuzz-$name"
        python "$h" "$WORK/fuzz-$name" "tests/fuzz/corpus/$name" -max_total_time="$FUZZ_SECONDS" \
            -rss_limit_mb=4096 -timeout=30 -artifact_prefix="$ROOT/fuzz-artifact-$name-" \
            >"$WORK/fuzz-$name.log" 2>&1 || { tail -60 "$WORK/fuzz-$name.log"; exit 1; }
        grep -E "^(#[0-9]+ +DONE|Done)" "$WORK/fuzz-$name.log" | tail -1 || true
    done
fi
unset LD_PRELOAD

if [ "${LEAK_CHECK:-1}" != 0 ] && command -v valgrind >/dev/null; then
    echo "== leak check (valgrind, normal build)"
    cd "$ROOT" && python tests/leak_check.py --valgrind
fi
echo "== sanitize.sh: no reports"
