#!/bin/bash
# The one GPU command of the default model's fine-tune (docs/models.md, "GPU fine-tune"). Prepare here first:
#   1. the data, in the ignored folder .gpu/ (the two `swiftsam pack` commands at the top of
#      benchmarks/configs/swiftsam-r18-gpu.yaml; about 15 MiB);
#   2. the pycocotools wheel for the GPU machine's Python 3.12, in the ignored folder .whl/:
#      python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl pycocotools==2.0.11
# Then, on the GPU machine, from the repository root (carrying .gpu and .whl), with OUT the folder that comes back:
#   bash benchmarks/gpu_finetune.sh 450 60000        # train for ~450 s, at most 60,000 images
# OUT receives log.txt, run.tgz (metrics.jsonl, MODEL_CARD.md, model_card.json, config.json) and the weights
# as fp16 parts w/part*.pt (each <= 14 MiB); here: python benchmarks/gpu_finetune.py join OUT/w model.pt.
# NO_WHEELS=1 PY=.venv/bin/python RUN=/tmp/dry PROBE=2 ... device=cpu batch_size=2 runs it on a CPU (dry run).
set -o pipefail
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
PY=${PY:-python3}
OUT=${OUT:-/tmp/out}
R=${RUN:-out/models/r18-gpu}
mkdir -p "$OUT"
if [ -z "$NO_WHEELS" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
{
  date -u; nproc; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  $PY -c "import torch, swiftsam; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  timeout $(( ${1%.*} + 70 )) $PY benchmarks/gpu_finetune.py run benchmarks/configs/swiftsam-r18-gpu.yaml "$R" "$@" 2>&1 \
    | grep -v -e UserWarning -e 'x = torch.from_numpy'
  echo "trainer rc $?"
  if [ -f "$R/model.pt" ]; then
    $PY benchmarks/gpu_finetune.py split "$R/model.pt" "$OUT/w"
  else  # stopped by the timeout: the last periodic checkpoint's weights
    $PY -c "import torch; s = torch.load('$R/checkpoints/last.pt', map_location='cpu', weights_only=True); print('FALLBACK: last.pt at step', s['step']); torch.save(s['student'], '/tmp/m.pt')" \
      && $PY benchmarks/gpu_finetune.py split /tmp/m.pt "$OUT/w"
  fi
  date -u
} 2>&1 | tee "$OUT/log.txt"
tar czf "$OUT/run.tgz" -C "$R" $(cd "$R" && ls metrics.jsonl MODEL_CARD.md model_card.json config.json 2>/dev/null)
ls -la "$OUT" "$OUT/w"
