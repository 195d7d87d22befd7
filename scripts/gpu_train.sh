#!/usr/bin/env bash
# On a lent GPU machine (device tool): GPU benchmark, then a time-boxed training run
# detached from this call (setsid) so a later call can collect it. Usage: gpu_train.sh MINUTES
set -u
MIN=${1:-16}
export PYTHONUNBUFFERED=1
mkdir -p runs/gpu "${OUT:-/tmp}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "${OUT:-/tmp}/gpu.txt"
python3 -m streamflame bench step --device cuda --batch 4096 --reps 10 2>&1 | tee "${OUT:-/tmp}/bench_step_cuda.txt"
setsid nohup python3 -m streamflame train --config configs/train/gpu.yaml --minutes "$MIN" \
    > runs/gpu/train.log 2>&1 < /dev/null &
echo "training pid $! for $MIN min"
