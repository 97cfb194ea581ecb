#!/usr/bin/env bash
# GPU check (issue 13): one script, one GPU, within 8 minutes. Prepare here with
# bench/gpu_prepare.sh, then with the device tool:
#     run(command="bash bench/gpu_check.sh", carry=[".gpu"], timeout_s=540)
# Stages (each under its own timeout; a failed stage is reported and the next one runs):
#   1 cuda-tests  pytest tests/test_cuda.py (the tests that need CUDA; skipped on CPU machines)
#   2 train       bench/train.py at 64 px on cuda: images/s, contiguous vs channels_last, AMP off/on
#   3 evaluate    one-subnet evaluation time at 64 px (BN recalibration + top-1) on cuda
#   4 workflow    the CIFAR-10 workflow (bench/gpu_check.yaml: EE_D, 64 px, the carried images,
#                 a few epochs per phase) through snakemake, then its pareto.csv
#   5 ddp         one torchrun DDP training step on one GPU (nccl)
# Figures go to $OUT (when set) as gpu_check.txt and pareto.csv, and to stdout.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/natv2-gpu-check}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.txt"
: > "$LOG"
say() { echo "$*" | tee -a "$LOG"; }
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
status=0
stage() {  # stage NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    say "=== $name (limit ${limit}s)"
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    say "=== $name: rc=$rc in $((SECONDS - t0)) s"
    [ "$rc" -eq 0 ] || status=1
}

# what the device image lacks comes as wheels (bench/gpu_prepare.sh)
if ! $PY -c "import snakemake, pymoo, lightgbm" 2>/dev/null; then
    if [ -d .gpu/whl ]; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl \
            && export PYTHONPATH="$PYTHONPATH:/tmp/site" PATH="/tmp/site/bin:$PATH"
    fi
fi
# the workflow's jobs call the natv2 command: a shim, as the package is not installed there
mkdir -p /tmp/natv2-bin && printf '#!/bin/sh\nexec %s -m natv2 "$@"\n' "$PY" > /tmp/natv2-bin/natv2 \
    && chmod +x /tmp/natv2-bin/natv2 && export PATH="/tmp/natv2-bin:$PATH"
say "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"
say "$($PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' 2>&1)"

stage cuda-tests 90 $PY -m pytest -q -x tests/test_cuda.py
stage train 75 $PY bench/train.py --device cuda --resolution 64 --batch-sizes 256 --images 8192 --repeats 2 --threads 8
stage evaluate 45 $PY bench/gpu_eval_ddp.py evaluate
# the carried images as an ImageFolder (PNG, lossless) for the workflow's imagefolder kind
if [ -f .gpu/cifar10_u8.pt ]; then
    stage data 60 $PY bench/gpu_eval_ddp.py imagefolder .gpu/cifar10_u8.pt /tmp/cifar10-gpu
    stage workflow 240 $PY -m snakemake --cores 16 --scheduler greedy --configfile bench/gpu_check.yaml \
        -- results/cifar10/pareto.csv
    if [ -f results/cifar10/pareto.csv ]; then
        cp results/cifar10/pareto.csv "$OUT/pareto.csv"
        say "$(column -s, -t < "$OUT/pareto.csv" 2>/dev/null || cat "$OUT/pareto.csv")"
    else
        tail -n 30 logs/cifar10/*.log 2>/dev/null | tail -n 60 | tee -a "$LOG"
    fi
else
    say "=== workflow: skipped (.gpu/cifar10_u8.pt absent: run bench/gpu_prepare.sh here first)"
    status=1
fi
stage ddp 60 $PY -m torch.distributed.run --standalone --nproc-per-node 1 bench/gpu_eval_ddp.py ddp
say "gpu_check: $([ $status -eq 0 ] && echo all stages passed || echo some stage FAILED)"
exit $status
