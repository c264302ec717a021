#!/usr/bin/env bash
# Issue 5's full experiment (benchmarks/magnet_smollm2.py at its defaults: 1000 steps of 8 x 256
# per preset, the full test sets) on a lent GPU machine. That machine sees neither ../shared/data
# nor the SmolLM2 GGUF, and each call carries at most 64 MiB, so the 94 MB GGUF travels in two
# parts over two calls of one warm lease (a warm machine keeps ignored files between calls; it
# is given back after 30 s idle, so issue the calls back to back). benchmarks/README_gpu.md
# has the call sequence.
#
#   bash benchmarks/results_on_gpu.sh pack           # here: .xfer1/ (GGUF part 1), .xfer2/
#                                                    # (GGUF part 2 + data), under 64 MiB each
#   bash benchmarks/results_on_gpu.sh land           # there, call 1 (carry .xfer1)
#   bash benchmarks/results_on_gpu.sh run [ARGS]     # there, call 2.. (carry .xfer2 and .whl):
#                                                    # builds (gpu_check.sh steps a-c), then runs
#                                                    # magnet_smollm2.py --device cuda ARGS
#   bash benchmarks/results_on_gpu.sh finish DIR     # here: DIR = the files a run call brought
#                                                    # back; adds the STS anchor on this CPU and
#                                                    # writes docs/RESULTS.md
#
# The run is resumable (magnet_smollm2.py caches each model's results and checkpoints every
# --checkpoint-every steps) under /tmp/magnet_results on the GPU machine, so a run call cut by
# its time limit continues in the next call on the same lease. Each run call leaves
# $OUT/results.tar.gz (the per-model results and adaptation records), $OUT/RESULTS.md and
# $OUT/run.log. Environment: RUN_BUDGET_S (seconds for magnet_smollm2.py in one call, default
# what is left of 500 s after the build), RESULTS_DEVICE (default cuda; cpu for a dry run of
# the whole sequence on this machine, e.g.
# `OUT=/tmp/o RESULTS_DEVICE=cpu bash benchmarks/results_on_gpu.sh run --quick`), PYTHON
# (default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
LANDED=/tmp/magnet_xfer       # on the GPU machine: the reassembled GGUF and the data
RUNS=/tmp/magnet_results      # on the GPU machine: magnet_smollm2.py's --out
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
PART1_BYTES=$((56 * 1024 * 1024))

# The data files magnet_smollm2.py reads, relative to ../shared/data.
DATA_FILES=(
    wikitext2/wiki.valid.tokens wikitext2/wiki.test.tokens
    text sts/stsbenchmark/sts-test.csv conll2003 conll2000 ud_ewt
)

usage() {
    sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 2
}

find_gguf() {
    PYTHONPATH="$ROOT" "$PY" -c "
from tests.conftest import find_smollm2_gguf
p = find_smollm2_gguf()
print(p if p else '')"
}

cmd_pack() {
    local gguf data
    gguf="${1:-$(find_gguf)}"
    [[ -f "$gguf" ]] || { echo "pack: SmolLM2 GGUF not found (pass its path)" >&2; exit 1; }
    data="${MAGNET_SHARED_DATA:-$ROOT/../shared/data}"
    [[ -d "$data" ]] || { echo "pack: $data not found (set MAGNET_SHARED_DATA)" >&2; exit 1; }
    for d in .xfer1 .xfer2; do
        grep -qxF "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >>.git/info/exclude
    done
    rm -rf .xfer1 .xfer2
    mkdir -p .xfer1 .xfer2
    head -c "$PART1_BYTES" "$gguf" >.xfer1/gguf.part1
    tail -c +"$((PART1_BYTES + 1))" "$gguf" >.xfer2/gguf.part2
    sha256sum "$gguf" | awk -v n="$GGUF_NAME" '{print $1 "  " n}' >.xfer2/gguf.sha256
    tar -C "$data" -cJf .xfer2/data.tar.xz "${DATA_FILES[@]}"
    du -sh .xfer1 .xfer2
    local wheels=0
    [[ -d .whl ]] && wheels=$(du -sm .whl | cut -f1)
    echo "call 1 carries .xfer1; call 2 carries .xfer2 and .whl (${wheels} MiB)"
}

cmd_land() {
    [[ -f .xfer1/gguf.part1 ]] || { echo "land: .xfer1/gguf.part1 missing (carry .xfer1)" >&2; exit 1; }
    mkdir -p "$LANDED"
    cp .xfer1/gguf.part1 "$LANDED/"
    ls -l "$LANDED"
}

# Reassembles the GGUF (once) and unpacks the data (once).
assemble() {
    if [[ ! -f "$LANDED/$GGUF_NAME" ]]; then
        [[ -f "$LANDED/gguf.part1" ]] || { echo "run: part 1 not landed (run 'land' first, same lease)" >&2; exit 1; }
        [[ -f .xfer2/gguf.part2 ]] || { echo "run: .xfer2/gguf.part2 missing (carry .xfer2)" >&2; exit 1; }
        cat "$LANDED/gguf.part1" .xfer2/gguf.part2 >"$LANDED/$GGUF_NAME.tmp"
        (cd "$LANDED" && mv "$GGUF_NAME.tmp" "$GGUF_NAME" && sha256sum -c "$ROOT/.xfer2/gguf.sha256")
    fi
    if [[ ! -d "$LANDED/data/conll2003" ]]; then
        mkdir -p "$LANDED/data"
        tar -C "$LANDED/data" -xJf .xfer2/data.tar.xz
    fi
}

cmd_run() {
    : "${OUT:?run: set OUT (the folder whose files come back)}"
    local started=$SECONDS
    assemble
    local device="${RESULTS_DEVICE:-cuda}"
    mkdir -p "$OUT" "$RUNS"
    if [[ "$device" != cpu ]] && ! PYTHONPATH="/tmp/site:$ROOT" "$PY" -c \
        "import magnet; assert magnet.cuda_is_available()" 2>/dev/null; then
        GPU_CHECK_STEPS=abc GPU_CHECK_BUDGET_S=200 OUT="$OUT/build" bash benchmarks/gpu_check.sh >/dev/null 2>&1 || true
        cp "$OUT/build/gpu_check.log" "$OUT/build.log" 2>/dev/null || true
        rm -rf "$OUT/build"
    fi
    local name=""
    [[ "$device" != cpu ]] && name="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)"
    printf '%s\n%s\n' "$device" "$name" >"$RUNS/device.txt"
    # what is left of 500 s after the build, so that the call (timeout_s=540) still returns the
    # results: a fixed 480 s after a build of up to 200 s ran past it
    local budget="${RUN_BUDGET_S:-$((500 - (SECONDS - started)))}"
    ((budget < 60)) && budget=60
    set +e
    PYTHONPATH="/tmp/site:$ROOT" MAGNET_SHARED_DATA="$LANDED/data" MAGNET_GPU_NAME="$name" \
        PYTHONUNBUFFERED=1 timeout -k 10 "$budget" \
        "$PY" benchmarks/magnet_smollm2.py --device "$device" --no-anchor \
        --gguf "$LANDED/$GGUF_NAME" --out "$RUNS" --results "$RUNS/RESULTS.md" "$@" \
        >"$OUT/run.log" 2>&1
    local rc=$?
    set -e
    echo "magnet_smollm2.py exit status $rc" >>"$OUT/run.log"
    (cd "$RUNS" && tar -czf "$OUT/results.tar.gz" device.txt results models/*.json 2>/dev/null) ||
        tar -C "$RUNS" -czf "$OUT/results.tar.gz" device.txt results
    [[ -f "$RUNS/RESULTS.md" ]] && cp "$RUNS/RESULTS.md" "$OUT/"
    tail -5 "$OUT/run.log"
    return "$rc"
}

cmd_finish() {
    local back="${1:?finish: the folder a run call brought back}"
    local out="$ROOT/runs/magnet_smollm2_gpu"
    shift
    mkdir -p "$out"
    tar -C "$out" -xzf "$back/results.tar.gz"
    local device name
    device="$(sed -n 1p "$out/device.txt")"
    name="$(sed -n 2p "$out/device.txt")"
    # Every model's results are cached now: this evaluates only the anchor (sentence-transformers
    # on this CPU) and writes the table. --device names where the models ran; nothing loads there.
    MAGNET_GPU_NAME="$name" "$PY" benchmarks/magnet_smollm2.py --out "$out" --device "$device" "$@"
}

case "${1:-}" in
pack) shift; cmd_pack "$@" ;;
land) shift; cmd_land "$@" ;;
run) shift; cmd_run "$@" ;;
finish) shift; cmd_finish "$@" ;;
*) usage ;;
esac
