#!/usr/bin/env bash
# One device call: train MINUTES on the GPU in the foreground, then copy the run (final weights,
# train_state with optimiser and lineage, log) to $OUT so it comes back; `--resume runs/gpu_stage5`
# continues it later on any device. Prepared and tested on CPU with `SF_SMOKE=1` (a few steps).
# Usage: bash scripts/gpu_stage5.sh MINUTES [CONFIG]
set -euo pipefail
MIN=${1:-10}
CFG=${2:-configs/train/gpu_stage5.yaml}
RUN=$(python3 -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['out_dir'])" "$CFG")
OUT=${OUT:-/tmp/sf-out}
export PYTHONUNBUFFERED=1
mkdir -p "$RUN" "$OUT"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
EXTRA=()
if [ "${SF_SMOKE:-0}" = 1 ]; then
    EXTRA=(--steps 3 --workers 0); PY=${PYTHON:-.venv/bin/python}
else
    PY=${PYTHON:-python3}
    # the device image lacks some of the package's own dependencies (orjson, isal: the state
    # codec): the wheels scripts/gpu_bench_prepare.sh put in gpu/bench/wheels (carry "gpu")
    if [ -d gpu/bench/wheels ]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            gpu/bench/wheels/*.whl
        export PYTHONPATH=/tmp/site:$PWD
    fi
fi
"$PY" -m streamflame train --config "$CFG" --minutes "$MIN" "${EXTRA[@]}" 2>&1 | tee "$RUN/train.log"
cp -r "$RUN" "$OUT/"
