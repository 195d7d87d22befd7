#!/usr/bin/env bash
# On a lent GPU machine (device tool): GPU benchmark, then a time-boxed training run
# detached from this call (setsid) so a later call can collect it.
# Usage: gpu_train.sh MINUTES [CONFIG]   (CONFIG defaults to configs/train/gpu.yaml; its out_dir holds the log)
set -u
MIN=${1:-16}
CFG=${2:-configs/train/gpu.yaml}
RUN=$(python3 -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['out_dir'])" "$CFG")
export PYTHONUNBUFFERED=1
mkdir -p "$RUN" "${OUT:-/tmp}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "${OUT:-/tmp}/gpu.txt"
python3 -m streamflame bench step --device cuda --batch 4096 --reps 10 2>&1 | tee "${OUT:-/tmp}/bench_step_cuda.txt"
setsid nohup python3 -m streamflame train --config "$CFG" --minutes "$MIN" \
    > "$RUN/train.log" 2>&1 < /dev/null &
echo "training pid $! for $MIN min"
