#!/bin/bash
# Issue 19's GPU measurement (benchmarks/gpu.py), one command on the GPU machine. Prepare here first the
# wheels the GPU machine lacks, in the ignored folder .whl/ (installed with --no-deps into /tmp/site there):
#   pycocotools (the train section's COCO masks; benchmarks/gpu_finetune.sh's wheel) and efficientsam (the
#   authors' EfficientViT-SAM, for the efficientvit_reference section; pure Python, needs torch + torchvision):
#      python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl \
#          pycocotools==2.0.11 efficientsam==1.0.0
# Then, on the GPU machine, from the repository root (carrying .whl), with OUT the folder that comes back:
#   bash benchmarks/gpu.sh                 # ~7 minutes: --budget 420 (seconds) inside an outer timeout
#   bash benchmarks/gpu.sh --budget 300 --only nanosam_pipeline,decoder
# OUT receives gpu.json, gpu_table.md (the table for benchmarks/gpu.md) and log.txt.
# A missing wheel is not fatal: the section that needs it records why. NO_WHEELS=1 skips the install.
set -o pipefail
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor}
PY=${PY:-python3}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if [ -z "$NO_WHEELS" ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
fi
BUDGET=420
for ((i = 1; i <= $#; i++)); do [ "${!i}" = "--budget" ] && j=$((i + 1)) && BUDGET=${!j}; done
{
  date -u; nproc; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  # the script stops itself at its budget; the outer timeout only guards against a hang
  timeout --kill-after=10 $(( ${BUDGET%.*} + 45 )) $PY benchmarks/gpu.py --budget "$BUDGET" --out "$OUT/gpu.json" "$@" \
    > "$OUT/gpu_table.md"
  echo "gpu.py rc $?"
  cat "$OUT/gpu_table.md"
  date -u
} 2>&1 | grep -v -e UserWarning -e 'warnings.warn' | tee "$OUT/log.txt"
