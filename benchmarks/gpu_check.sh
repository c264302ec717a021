#!/usr/bin/env bash
# The single script of a GPU session for issue 8 (the CUDA backend): environment, OpenBLAS wheel,
# CUDA build, per-op parity programs, model-level parity tests, and the GPU benchmark against
# PyTorch. Run from the repository root with $OUT set (files under $OUT come back):
#
#     bash benchmarks/gpu_check.sh             # on the GPU machine (whole run < 8 minutes)
#     OUT=/tmp/gpuout bash benchmarks/gpu_check.sh --dry-run   # anywhere: GPU steps skipped,
#                                              # the benchmark on the CPU with --quick
#
# Every step runs under `timeout`, is timed, and is logged to $OUT/gpu_check.log; a failing
# step does not stop the later ones. $OUT/summary.md gets the pass/fail table and the key
# numbers; $OUT/bench.json the benchmark's full results; $OUT/build.log the whole build
# output. benchmarks/README_gpu.md explains it.
#
# The GPU machine has no network and no scipy-openblas32 (magnet links its OpenBLAS): carry the
# wheel in .whl/. Once, in the checkout the session runs from (the lead's /work/main):
#
#     echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#         --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#         --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#         --platform manylinux1_x86_64 -d .whl scipy-openblas32==0.3.34.481.3
#
# (7.9 MB) and name ".whl" in the run's carry. Environment knobs:
#   GPU_CHECK_BUDGET_S     seconds for the whole script (default 420); steps get what is left
#   MAGNET_CUDA_ARCH       nvcc targets (default: sm_90 code, for the H100 / H200)
#   MAGNET_WHL_DIR         the wheel folder (default .whl)
#   GPU_CHECK_PYTEST_ARGS  extra pytest arguments (default: -k "not emulated": the emulator's
#                          check programs are CPU work that CI runs; on the GPU only the GPU ones)
#   GPU_CHECK_STEPS        the steps to run, letters of "abcdefg" (default abcdef; b always
#                          runs): e.g. GPU_CHECK_STEPS=f on a still-warm machine reruns the
#                          benchmark; g (optional) adds the kernel profile of the 1B training
#                          step (benchmarks/gpu_profile.py, about 150 s) as $OUT/profile.md
#                          against the build already there, four times: as built, then with
#                          the switches that are off by default, LoRA's dropped products on the
#                          tensor cores (MAGNET_CUDA_LORA_TC=1), attention from packed bfloat16
#                          operands (MAGNET_CUDA_ATTENTION_PACKED=1), and both
#   MAGNET_CUBLAS_PATH     cuBLAS for the backend (default: found by the dynamic linker, else
#                          looked for in /usr/local/cuda and the nvidia-cublas wheel)
#   DRY_RUN_CUDA           --dry-run's build mode: 0 (default, CPU build) or emulate
#   PYTHON                 the interpreter (default python3)
set -uo pipefail

DRY=0
if [[ "${1:-}" == --dry-run ]]; then
    DRY=1
elif [[ $# -gt 0 ]]; then
    echo "usage: $0 [--dry-run]" >&2
    exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
if [[ -z "${OUT:-}" ]]; then
    OUT="$ROOT/gpu_check_out"
    echo "OUT is not set: writing to $OUT" >&2
fi
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
SUMMARY="$OUT/summary.md"
: >"$LOG"
PY="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_BUDGET_S:-420}"
export MAGNET_CUDA_ARCH="${MAGNET_CUDA_ARCH:--gencode arch=compute_90,code=sm_90}"
export PYTHONUNBUFFERED=1 PYTHON="$PY" PIP_ROOT_USER_ACTION=ignore
WHL_DIR="${MAGNET_WHL_DIR:-.whl}"
JOBS="$(nproc 2>/dev/null || echo 2)"
STEPS="${GPU_CHECK_STEPS:-abcdef}"
T0=$SECONDS

NAMES=()
RESULTS=()
DURATIONS=()
NOTES=()

log() { echo "$*" | tee -a "$LOG"; }

# seconds left in the whole budget
left() { echo $((BUDGET - (SECONDS - T0))); }

# record NAME RESULT SECONDS NOTE
record() {
    NAMES+=("$1")
    RESULTS+=("$2")
    DURATIONS+=("$3")
    NOTES+=("$4")
    log "== $1: $2 ($3 s)${4:+ - $4}"
}

# run_step NAME CAP RESERVE COMMAND: COMMAND (a bash string) under timeout min(CAP, left -
# RESERVE), output to the log and the terminal; sets STEP_RC and STEP_S.
run_step() {
    local name="$1" cap="$2" reserve="$3" cmd="$4"
    local t=$(($(left) - reserve))
    ((t > cap)) && t=$cap
    if ((t < 10)); then
        STEP_RC=124
        STEP_S=0
        log "== $name: no time left in the budget (${BUDGET} s)"
        return
    fi
    log ""
    log "==== $name (timeout ${t} s) ===="
    log "\$ $cmd"
    local start=$SECONDS
    timeout -k 10 "$t" bash -c "$cmd" 2>&1 | tee -a "$LOG"
    STEP_RC=${PIPESTATUS[0]}
    STEP_S=$((SECONDS - start))
    ((STEP_RC == 124 || STEP_RC == 137)) && log "== $name: timed out after ${t} s"
}

want() { [[ "$STEPS" == *"$1"* ]]; }

verdict() { if (($1 == 0)); then echo PASS; else echo "FAIL"; fi; }

log "gpu_check.sh: $(date -u +%Y-%m-%dT%H:%M:%SZ), dry run: $DRY, budget ${BUDGET} s, root $ROOT"

# ---- a. environment
HAVE_GPU=0
if ((DRY == 0)) && nvidia-smi -L 2>/dev/null | grep -q GPU; then HAVE_GPU=1; fi
ENV_NOTE="$(nvidia-smi -L 2>/dev/null | grep -m1 -o 'GPU 0: [^(]*' | sed 's/ *$//')"
ENV_CMD="
nvidia-smi -L || echo 'nvidia-smi: no GPU listed'
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null
nvcc --version 2>/dev/null | tail -n 2 || echo 'nvcc: not found'
$PY --version
echo \"cpus: $JOBS\"
git rev-parse HEAD 2>/dev/null || echo 'no git metadata (copied tree)'
$PY -c '
import numpy, torch, transformers
print(\"numpy\", numpy.__version__, \"| torch\", torch.__version__, \"(CUDA\", torch.version.cuda,
      \") | transformers\", transformers.__version__)
print(\"torch sees CUDA:\", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"\")
'"
if want a; then
    run_step "a. environment" 60 60 "$ENV_CMD"
    record "a. environment" "$(verdict "$STEP_RC")" "$STEP_S" "${ENV_NOTE:-no GPU listed}"
fi
if ((DRY == 0 && HAVE_GPU == 0)); then
    log "WARNING: not a dry run, but nvidia-smi lists no GPU: the GPU steps will fail"
fi

# ---- b. scipy-openblas32 from the carried wheel
WHEELS=("$WHL_DIR"/scipy_openblas32-*.whl)
if [[ -f "${WHEELS[0]}" ]]; then
    SITE=/tmp/site
    # no reserve: every later step needs this one
    run_step "b. scipy-openblas32 wheel" 60 0 "
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target $SITE ${WHEELS[*]}"
    if ((STEP_RC == 0)); then
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    fi
    if ((STEP_RC == 0)) && "$PY" -c "import scipy_openblas32 as s; print(s.__file__)" >>"$LOG" 2>&1; then
        record "b. scipy-openblas32 wheel" PASS "$STEP_S" "$(basename "${WHEELS[0]}") -> $SITE"
    else
        record "b. scipy-openblas32 wheel" FAIL "$STEP_S" "install from $WHL_DIR failed"
    fi
elif "$PY" -c "import scipy_openblas32" >/dev/null 2>&1; then
    record "b. scipy-openblas32 wheel" PASS 0 "no wheel in $WHL_DIR; already importable"
else
    record "b. scipy-openblas32 wheel" FAIL 0 \
        "no $WHL_DIR/scipy_openblas32-*.whl and not importable (carry .whl, see README_gpu.md)"
fi

# ---- cuBLAS for the check programs (magnet's backend dlopens it; the standalone programs do not
# look in the nvidia-cublas wheel as magnet.Model.to does): MAGNET_CUBLAS_PATH where the dynamic
# linker does not already know a libcublas
if [[ -z "${MAGNET_CUBLAS_PATH:-}" ]] && ! ldconfig -p 2>/dev/null | grep -q 'libcublas\.so'; then
    CUBLAS_DIR="$("$PY" - <<'PYEOF' 2>/dev/null
import glob
import importlib.util
import os

dirs = ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"]
spec = importlib.util.find_spec("nvidia")
for root in (spec.submodule_search_locations or []) if spec else []:
    dirs += [os.path.join(root, sub) for sub in ("cublas/lib", "cu13/lib", "cu12/lib")]
for d in dirs:
    if glob.glob(os.path.join(d, "libcublas.so*")):
        print(d)
        break
PYEOF
)"
    if [[ -n "$CUBLAS_DIR" ]]; then
        export MAGNET_CUBLAS_PATH="$CUBLAS_DIR"
        log "cuBLAS: the dynamic linker knows none; MAGNET_CUBLAS_PATH=$CUBLAS_DIR"
    else
        log "cuBLAS: none found (ldconfig, /usr/local/cuda, the nvidia-cublas wheel)"
    fi
else
    log "cuBLAS: ${MAGNET_CUBLAS_PATH:-$(ldconfig -p 2>/dev/null | grep -m1 -o 'libcublas\.so[.0-9]*')}"
fi

# ---- c. build in place with the CUDA backend
if ((DRY)); then
    BUILD_ENV="MAGNET_CUDA=${DRY_RUN_CUDA:-0}"
else
    BUILD_ENV="MAGNET_CUDA=1"
fi
BUILD_CMD="
env $BUILD_ENV MAGNET_CUDA_ARCH=\"\$MAGNET_CUDA_ARCH\" $PY setup.py build_ext --inplace -j $JOBS \\
    >\"$OUT/build.log\" 2>&1; rc=\$?
tail -n 30 \"$OUT/build.log\"
[[ \$rc == 0 ]] || exit \$rc
$PY -c '
import magnet
from magnet.device import cuda_unavailable_reason
ok = magnet.cuda_is_available()
print(\"magnet\", magnet.__file__, \"| cuda_is_available:\", ok, \"|\", cuda_unavailable_reason())
raise SystemExit(0 if ok or $DRY else 3)
'"
if want c; then
    run_step "c. build" 300 120 "$BUILD_CMD"
    if ((STEP_RC == 3)); then
        record "c. build ($BUILD_ENV)" FAIL "$STEP_S" "built, but magnet.cuda_is_available() is False"
    else
        record "c. build ($BUILD_ENV)" "$(verdict "$STEP_RC")" "$STEP_S" \
            "MAGNET_CUDA_ARCH=$MAGNET_CUDA_ARCH"
    fi
fi

# ---- d. per-op parity programs (tests/cuda/check_*.cu on the GPU)
if ! want d; then
    :
elif ((DRY)); then
    record "d. tests/cuda/run_checks.sh cuda" SKIP 0 "skipped: no GPU (dry run)"
elif [[ ! -f tests/cuda/run_checks.sh ]]; then
    record "d. tests/cuda/run_checks.sh cuda" FAIL 0 "tests/cuda/run_checks.sh missing (merge cudart)"
else
    run_step "d. tests/cuda/run_checks.sh cuda" 180 90 "MAGNET_CHECK_TIMEOUT=120 bash tests/cuda/run_checks.sh cuda"
    NOTE="$(grep -E '^run_checks.sh:' "$LOG" | tail -n 1)"
    record "d. tests/cuda/run_checks.sh cuda" "$(verdict "$STEP_RC")" "$STEP_S" "${NOTE:-exit $STEP_RC}"
fi

# ---- e. model-level parity tests
TESTS=()
MISSING=()
for f in tests/test_cuda_model.py tests/test_cuda_api.py tests/test_cuda_checks.py; do
    if [[ -f "$f" ]]; then TESTS+=("$f"); else MISSING+=("$f"); fi
done
# test_cuda_checks_on_gpu reruns step d's programs: left out when step d ran
if want d && ((DRY == 0)); then
    PYTEST_ARGS="${GPU_CHECK_PYTEST_ARGS:--k 'not emulated and not on_gpu'}"
else
    PYTEST_ARGS="${GPU_CHECK_PYTEST_ARGS:--k 'not emulated'}"
fi
if ! want e; then
    :
elif ((${#TESTS[@]})); then
    run_step "e. pytest" 180 60 "$PY -m pytest -q -x -rs -p no:cacheprovider ${TESTS[*]} $PYTEST_ARGS"
    NOTE="$(grep -E '(passed|failed|skipped|error|no tests ran)' "$LOG" | grep -E ' in [0-9.]+s' | tail -n 1)"
    RES="$(verdict "$STEP_RC")"
    if ((STEP_RC == 0)) && ((DRY == 0)) && [[ "$NOTE" == *skipped* && "$NOTE" != *passed* ]]; then
        RES=FAIL  # on the GPU a wholly skipped run means the device was not used
    fi
    ((${#MISSING[@]})) && NOTE="$NOTE; missing: ${MISSING[*]}"
    ((${#MISSING[@]})) && ((DRY == 0)) && RES=FAIL
    record "e. pytest ${TESTS[*]}" "$RES" "$STEP_S" "$NOTE"
else
    record "e. pytest" FAIL 0 "no test files: ${MISSING[*]}"
fi

# ---- f. benchmark against PyTorch
PROFILE_RESERVE=0
want g && ((DRY == 0)) && PROFILE_RESERVE=155
BENCH_BUDGET=$(($(left) - 25 - PROFILE_RESERVE))
if ! want f; then
    :
elif ((BENCH_BUDGET < 60)); then
    record "f. gpu_bench.py" FAIL 0 "only ${BENCH_BUDGET} s left in the budget: not run"
else
    if ((DRY)); then
        BENCH_ARGS="--device cpu --quick"
    else
        BENCH_ARGS=""
    fi
    run_step "f. gpu_bench.py" "$((BENCH_BUDGET + 20))" 0 \
        "$PY benchmarks/gpu_bench.py $BENCH_ARGS --budget-s $BENCH_BUDGET --out \"$OUT/bench.json\" >\"$OUT/bench.md.tmp\"; rc=\$?; cat \"$OUT/bench.md.tmp\"; mv \"$OUT/bench.md.tmp\" \"$OUT/bench.md\"; exit \$rc"
    NOTE="performance $(grep -E '^criteria: ' "$OUT/bench.md" 2>/dev/null)"
    ((STEP_RC != 0)) && NOTE="$NOTE; incomplete: see bench.md"
    record "f. gpu_bench.py${BENCH_ARGS:+ $BENCH_ARGS}" "$(verdict "$STEP_RC")" "$STEP_S" "$NOTE"
fi

# ---- g. where the training step's GPU time goes (optional)
if ! want g; then
    :
elif ((DRY)); then
    record "g. gpu_profile.py" SKIP 0 "skipped: no GPU (dry run)"
else
    run_step "g. gpu_profile.py" 170 0 \
        "$PY benchmarks/gpu_profile.py --sections train-large --steps 3 --top 30 --compare lora-tc --compare attention-packed --compare both --out \"$OUT/profile.md\" >/dev/null"
    NOTE="$(grep -E '^(## |wall per step)' "$OUT/profile.md" 2>/dev/null | paste -sd ' ' -)"
    record "g. gpu_profile.py" "$(verdict "$STEP_RC")" "$STEP_S" "kernel tables in profile.md: ${NOTE}"
fi

# ---- summary
{
    echo "# gpu_check.sh summary"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ); dry run: $DRY; ${ENV_NOTE:-no GPU}; total $((SECONDS - T0)) s of ${BUDGET} s"
    echo
    echo "| step | result | seconds | note |"
    echo "|---|---|---:|---|"
    for i in "${!NAMES[@]}"; do
        echo "| ${NAMES[$i]} | ${RESULTS[$i]} | ${DURATIONS[$i]} | ${NOTES[$i]//|/\\|} |"
    done
    echo
    if [[ -f "$OUT/bench.md" ]]; then
        echo "## Benchmark (benchmarks/gpu_bench.py)"
        echo
        cat "$OUT/bench.md"
        echo
    fi
    echo "## Parity failures (from the log)"
    echo
    grep -E '^(FAIL |== check_.*FAILED|FAILED |E  +assert|run_checks.sh: .*failed)' "$LOG" \
        | head -n 40 || true
} >"$SUMMARY"
log ""
cat "$SUMMARY"
FAILS=0
for r in "${RESULTS[@]}"; do [[ "$r" == FAIL ]] && FAILS=$((FAILS + 1)); done
log "gpu_check.sh: $FAILS failing step(s), $((SECONDS - T0)) s"
((FAILS == 0))
