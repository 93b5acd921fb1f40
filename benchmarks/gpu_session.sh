#!/usr/bin/env bash
# One prepared GPU session: the checks and measurements behind docs/benchmarks.md's GPU section.
# Run from the repository root on a CUDA machine that has torch and the project's dependencies:
#   OUT=/tmp/gpu-out BUDGET=520 bash benchmarks/gpu_session.sh
# Every step has its own time limit; a failed step does not stop the next one. The last step (the defense study)
# gets whatever is left of BUDGET seconds; its runs resume where they stopped if the script is run again.
# What comes back is a handful of files: throughput.jsonl, logs.tar.gz and the study folders without checkpoints.
set -u
source "$(dirname "$0")/gpu_common.sh"
BUDGET=${BUDGET:-520}
pack() {
  tar -czf "$OUT/logs.tar.gz" -C "$W" logs
  [ -d "$W/quick" ] && tar -czf "$OUT/quick.tar.gz" -C "$W" --exclude='*.pt' quick
  [ -d "$W/defenses" ] && tar -czf "$OUT/defenses.tar.gz" -C "$W" --exclude='*.pt' --exclude='cache' defenses
}
trap pack EXIT

nvidia-smi -L
$PY -c "import torch, sklearn, skimage, pandas, filelock; print(torch.__version__, torch.cuda.get_device_name())"

# 1. The CUDA-graph training step equals the eager one (DenseNet-121, 64 px; recapture and eager fallback too).
step cuda-graph-check 90 $PY tests/test_cuda_graph.py

# 2. Throughput at 224 px: eager against the whole step as one CUDA graph, batch 128, 256 and 512 (bf16,
#    channels_last).
J=$OUT/throughput.jsonl
TP="$PY benchmarks/train_throughput.py --image-size 224 --steps 20 --warmup 8 --workers 8 --json $J"
step tp224-b128 60 $TP --batch-size 128
step tp224-b128-graph 60 $TP --batch-size 128 --cuda-graph
step tp224-b256 75 $TP --batch-size 256
step tp224-b256-graph 75 $TP --batch-size 256 --cuda-graph
step tp224-b512 60 $TP --batch-size 512
step tp224-b512-graph 60 $TP --batch-size 512 --cuda-graph

# 3. The quick protocol end to end with train.cuda_graph and TensorBoard logging.
step quick-graph 90 $PY -m medbackdoor run --config quick --out "$W/quick" --set train.cuda_graph=true \
  --set 'train.log=[tensorboard]'

# 4. The defense study over three seeds, with what time is left.
LEFT=$((BUDGET - SECONDS - 15))
[ "$LEFT" -gt 60 ] && step defenses "$LEFT" $PY -m medbackdoor reproduce --protocol defenses --seeds 0 1 2 --jobs 8 \
  --out "$W/defenses"
cat "$J"
