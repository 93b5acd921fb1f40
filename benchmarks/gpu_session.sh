#!/usr/bin/env bash
# One prepared GPU session: the checks and measurements behind docs/benchmarks.md's GPU section.
# Run from the repository root on a CUDA machine that has torch and the project's dependencies:
#   OUT=/tmp/gpu-out bash benchmarks/gpu_session.sh
# Every step has its own time limit and logs to $OUT; a failed step does not stop the next one.
set -u
OUT=${OUT:-/tmp/gpu-out}
W=${WORK:-/tmp/mb-work}
mkdir -p "$OUT" "$W"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MEDBACKDOOR_CACHE=$W/cache
PY=${PYTHON:-python3}
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "=== $name (limit ${limit}s)"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "=== $name rc=$rc in $((SECONDS - t0))s"
  tail -n 4 "$OUT/$name.log"
}

nvidia-smi -L
$PY -c "import torch, sklearn, skimage, pandas, filelock, tensorboard; print(torch.__version__, torch.cuda.get_device_name())"

# 1. Throughput without compile: the run's own pipeline against the model-only bound (bf16, channels_last).
J=$OUT/throughput.jsonl
step tp224-b64 60 $PY benchmarks/train_throughput.py --image-size 224 --batch-size 64 --steps 30 --warmup 10 --workers 8 --json "$J"
step tp224-b128 60 $PY benchmarks/train_throughput.py --image-size 224 --batch-size 128 --steps 30 --warmup 10 --workers 8 --json "$J"
step tp64-b32 40 $PY benchmarks/train_throughput.py --image-size 64 --batch-size 32 --steps 60 --warmup 10 --workers 4 --json "$J"

# 2. The quick protocol end to end on CUDA, with TensorBoard logging.
step quick-cuda 100 $PY -m medbackdoor run --config quick --out "$W/quick" --set 'train.log=[tensorboard]'
cp "$W/quick/metrics.csv" "$OUT/quick-metrics.csv" 2>/dev/null

# 3. The attack-zoo study (seed 0 first, then the others while time lasts); runs resume where they stopped.
step attacks-seed0 170 $PY -m medbackdoor reproduce --protocol attacks --seeds 0 --jobs 8 --out "$W/attacks"

# 4. torch.compile at 224 px, batch 128.
export TORCHINDUCTOR_COMPILE_THREADS=16
step tp224-b128-compile 170 $PY benchmarks/train_throughput.py --image-size 224 --batch-size 128 --steps 30 --warmup 10 --workers 8 --compile --json "$J"

tar -czf "$OUT/attacks.tar.gz" -C "$W" --exclude='*.pt' attacks 2>/dev/null
tar -czf "$OUT/quick.tar.gz" -C "$W" --exclude='*.pt' quick 2>/dev/null
cat "$J"
