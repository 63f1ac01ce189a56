#!/usr/bin/env bash
# The GPU proof (issue 18): every GPU figure in one command, each step under its own time limit.
#
#   OUT=/some/dir ABLATE_DATA_DIR=<folder holding MNIST/raw and FashionMNIST/raw> \
#       bash benchmarks/gpu_proof.sh
#
# Steps, most precious figures first; each logs to <step>.log, runs under `timeout`, and the
# next runs whatever it ended with; the exit status is 1 when any step failed or ran out of time:
#   pytest      python -m pytest -m cuda tests/test_cuda.py (junit XML: pytest-cuda.xml)
#   throughput  benchmarks/throughput.py --workload all, the tutorial loop and groups doubled
#               until throughput flattens                  -> $OUT/throughput-gpu.csv
#   study       benchmarks/reference_study.py: `ablate run studies/mnist_mlp.py`, the whole
#               process timed, beside the tutorial loop on the same GPU (its results folder kept)
#                                                          -> $OUT/reference-study-gpu.csv
#   compare     ablate compare results/mnist_mlp against it (Welch per point) -> $OUT/compare.csv
#   compile     benchmarks/compile.py, eager vs torch.compile (reduce-overhead)
#                                                          -> $OUT/compile-gpu.csv
# $OUT/summary.txt: each step's exit status and seconds, nvidia-smi, torch and the card, and the
# headline figures. The lent GPU machine returns at most 8 files from $OUT, so a step's log sits
# in $OUT while it runs and then moves into $OUT/logs.tar.gz (rebuilt after every step) with the
# junit XML and the study's results folder.
#
# GPU_PROOF_DRY=1: a CPU dry run of every step, shortened (the digits study, compared with
# results/digits_mlp), to check the plumbing before a GPU is lent. GPU_PROOF_STEPS="study
# compare" runs only those steps; GPU_PROOF_TOTAL_S (default 560) caps the whole run, below
# the lent machine's 600 s per command; GPU_PROOF_STUDY names another study with committed
# results to run and compare; PYTHON the interpreter (default python3, else python).
set -euo pipefail

cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder for the figures}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-$(command -v python3 || command -v python)}
export PYTHONUNBUFFERED=1  # a log cut short by `timeout` keeps what was printed
# cuBLAS reads it at a process's first GEMM; ablate sets it on import, this covers the rest
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}
DRY=${GPU_PROOF_DRY:-0}
STEPS=${GPU_PROOF_STEPS:-pytest throughput compile study compare}
TOTAL=${GPU_PROOF_TOTAL_S:-560}
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/gpu_proof.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
export ABLATE_CACHE="$SCRATCH/cache"  # throughput's unzipped copies for torchvision; not in $OUT
START=$SECONDS
FAILED=0
SUMMARY="$OUT/summary.txt"
LOGS="$SCRATCH/logs"  # packed into $OUT/logs.tar.gz after every step
mkdir -p "$LOGS"

: "${ABLATE_DATA_DIR:?set ABLATE_DATA_DIR to the folder holding MNIST/raw and FashionMNIST/raw}"
for set in MNIST FashionMNIST; do
    if [[ ! -d "$ABLATE_DATA_DIR/$set/raw" ]]; then
        echo "gpu_proof: $ABLATE_DATA_DIR/$set/raw is missing" >&2
        exit 2
    fi
done
export ABLATE_DATA_DIR

if [[ "$DRY" == 1 ]]; then
    DEVICE=cpu
    STUDY=${GPU_PROOF_STUDY:-studies/digits_mlp.py}  # 25 s on 2 cores; its results committed
    THROUGHPUT=(--quick --max-group 4 --repeat 1 --until-flat 10)
    COMPILE=(--workload fashion --group 2 --steps 25 --rounds 1)
else
    DEVICE=cuda
    STUDY=${GPU_PROOF_STUDY:-studies/mnist_mlp.py}
    # one timed epoch per group (GPU timings hardly vary); groups double until one gains <10%
    THROUGHPUT=(--repeat 1 --until-flat 10)
    # eager and compiled alternated twice; the second compiled round reuses the compiled graph
    COMPILE=(--workload reference --group 16 --steps 300 --rounds 2)
    if ! "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
        echo "gpu_proof: torch sees no CUDA device; GPU_PROOF_DRY=1 runs the CPU dry run" >&2
        exit 2
    fi
fi
NAME=$(basename "$STUDY" .py)

{
    echo "gpu proof, $(date -u +%Y-%m-%dT%H:%M:%SZ), dry run: $DRY, device $DEVICE"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "--- nvidia-smi"
    nvidia-smi 2>&1 || echo "nvidia-smi: not available"
    echo "--- torch"
    "$PY" -c 'import platform, torch
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(torch.__version__, name, "python", platform.python_version())' 2>&1 || true
    echo "--- steps: name, exit status (124: out of time), wall seconds, time limit"
} >"$SUMMARY"

# limit NAME CAP: a step's seconds, at most CAP, leaving the later selected steps what they need
# at least (NEED); time an early step does not use goes to the later ones
ORDER=(pytest throughput study compare compile)
declare -A NEED=([pytest]=60 [throughput]=110 [study]=170 [compare]=20 [compile]=60)
limit() {
    local name=$1 cap=$2 later=0 after=0 s
    for s in "${ORDER[@]}"; do
        if ((after)) && [[ " $STEPS " == *" $s "* ]]; then
            later=$((later + NEED[$s]))
        fi
        if [[ "$s" == "$name" ]]; then
            after=1
        fi
    done
    local left=$((TOTAL - (SECONDS - START) - later))
    echo $((cap < left ? cap : left))
}

# step NAME LIMIT COMMAND...: run it under `timeout`, log it, record it; never stop the script
step() {
    local name=$1 limit=$2 rc=0 began
    shift 2
    if [[ " $STEPS " != *" $name "* ]]; then
        return 0
    fi
    if ((limit < 10)); then
        printf '%-11s skipped: %s s left for it within GPU_PROOF_TOTAL_S=%s\n' "$name" "$limit" \
            "$TOTAL" | tee -a "$SUMMARY"
        FAILED=1
        return 0
    fi
    echo "== $name (at most $limit s): $*"
    began=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1 || rc=$?
    ((rc == 0)) || FAILED=1
    printf '%-11s rc=%-3s %4s s  (limit %s s)\n' "$name" "$rc" $((SECONDS - began)) "$limit" \
        | tee -a "$SUMMARY"
    mv "$OUT/$name.log" "$LOGS/"
    tar -czf "$OUT/.logs.tar.gz" -C "$LOGS" . && mv "$OUT/.logs.tar.gz" "$OUT/logs.tar.gz"
}

# the reference study beside the tutorial loop, the script timed by /usr/bin/time -v where
# there is one (timeout's SIGTERM stops ablate, which stores the groups it finished, and the
# script writes its row; the copy still happens). `ablate run:` is the study's own time.
run_study() {
    local timer=() t0 rc=0
    [[ -x /usr/bin/time ]] && timer=(/usr/bin/time -v)
    trap 'echo "gpu_proof: out of time; stored groups kept"' TERM
    t0=$(date +%s.%N)
    ${timer[@]+"${timer[@]}"} "$PY" benchmarks/reference_study.py --study "$STUDY" \
        --device "$DEVICE" --out "$SCRATCH/study" --csv "$OUT/reference-study-gpu.csv" || rc=$?
    awk -v a="$t0" -v b="$(date +%s.%N)" -v rc="$rc" \
        'BEGIN { printf "wall: %.1f s for the whole process (exit %s)\n", b - a, rc }'
    mkdir -p "$LOGS/study-results"
    cp -r "$SCRATCH/study/$NAME" "$LOGS/study-results/" 2>/dev/null || true
    rm -f "$LOGS/study-results/$NAME/.lock"
    return "$rc"
}

# the steps take what is left, most precious first (limit); compile gets what remains
step pytest "$(limit pytest 150)" "$PY" -m pytest -m cuda -q -p no:cacheprovider \
    --durations=15 --junitxml="$LOGS/pytest-cuda.xml" tests/test_cuda.py
# throughput stops starting groups 40 s before its limit: the last group, the table, the CSV
TP=$(limit throughput 240)
step throughput "$TP" "$PY" benchmarks/throughput.py --workload all --device "$DEVICE" \
    "${THROUGHPUT[@]}" --budget $((TP - 40)) --csv "$OUT/throughput-gpu.csv"
export -f run_study
export PY STUDY SCRATCH DEVICE NAME LOGS OUT
step study "$(limit study 200)" bash -c run_study
step compare "$(limit compare 20)" "$PY" -m ablate compare "results/$NAME" \
    "$SCRATCH/study/$NAME" --out "$OUT"
step compile "$(limit compile 100)" "$PY" benchmarks/compile.py --device "$DEVICE" \
    "${COMPILE[@]}" --csv "$OUT/compile-gpu.csv"

# the headline figures, gathered from the logs
{
    echo "--- figures"
    grep -hE '^(=+ )?[0-9]+ (passed|failed|skipped|error)|^(FAILED|ERROR) ' "$LOGS/pytest.log"
    grep -hE 'groups stopped|^roofline inputs' "$LOGS/throughput.log"
    sed -n '/^workload  /,/^$/p' "$LOGS/throughput.log"
    grep -h '^best of' "$LOGS/compile.log"
    grep -hE '^(tutorial loop|fp32 roofline|ablate run|speedup|roofline|stopped):' "$LOGS/study.log"
    grep -hE '^wall:|Maximum resident' "$LOGS/study.log"
    grep -h 'points agree' "$LOGS/compare.log"
} >>"$SUMMARY" 2>/dev/null || true
echo "total: $((SECONDS - START)) s; failed: $FAILED" >>"$SUMMARY"
cat "$SUMMARY"
exit "$FAILED"
