#!/usr/bin/env bash
# Issue 20's GPU checks, prepared as one script: for DenseNet-121, ResNet-50 and ViT-B/16, the CUDA-graph step
# against the eager one (bf16, channels_last), training throughput at 224 px (eager and graphed), then the
# architectures study over three seeds with what time is left.
# On the GPU machine, from the repository root:   OUT=/tmp/gpu-out BUDGET=540 bash benchmarks/gpu_architectures.sh
# On a CPU, a smoke test of the script itself:    SMOKE=1 OUT=/tmp/smoke bash benchmarks/gpu_architectures.sh
# Every step has its own time limit; a failed step does not stop the next. The study resumes if run again.
set -u
source "$(dirname "$0")/gpu_common.sh"
BUDGET=${BUDGET:-540}
SMOKE=${SMOKE:-0}
ARCHS=${ARCHS:-densenet121 resnet50 vit_b_16}
pack() {
  tar -czf "$OUT/logs.tar.gz" -C "$W" logs
  [ -d "$W/architectures" ] && tar -czf "$OUT/architectures.tar.gz" -C "$W" --exclude='*.pt' --exclude='cache' \
    architectures
}
trap pack EXIT

J=$OUT/throughput.jsonl
if [ "$SMOKE" = 1 ]; then
  SIZE=32; BATCHES="4"; STEPS="--steps 2 --warmup 1"; GRAPH=""; SEEDS="0"
  STUDY_SET=(--set dataset.options.n_images=60 --set train.epochs=1 --set image_size=32 --set dataset.options.source_size=32)
else
  nvidia-smi -L
  $PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
  # 1. the graphed training step equals the eager one, for each architecture (64 px)
  step cuda-graph-check 150 $PY tests/test_cuda_graph.py $ARCHS
  SIZE=224; BATCHES="128"; STEPS="--steps 20 --warmup 8 --workers 8"; GRAPH="--cuda-graph"; SEEDS="0 1 2"
  STUDY_SET=()
fi
# 2. throughput at $SIZE px, bf16 and channels_last: eager, then the whole step as one CUDA graph
for arch in $ARCHS; do
  for b in $BATCHES; do
    step "tp-$arch-b$b" 90 $PY benchmarks/train_throughput.py --arch "$arch" --image-size "$SIZE" --batch-size "$b" \
      $STEPS --json "$J"
    [ -n "$GRAPH" ] && step "tp-$arch-b$b-graph" 90 $PY benchmarks/train_throughput.py --arch "$arch" \
      --image-size "$SIZE" --batch-size "$b" $STEPS $GRAPH --json "$J"
  done
done
# 3. the architectures study (train.cuda_graph on the GPU), with what time is left
LEFT=$((BUDGET - SECONDS - 15))
EXTRA=()
[ "$SMOKE" = 1 ] || EXTRA=(--set train.cuda_graph=true)
[ "$LEFT" -gt 30 ] && step architectures "$LEFT" $PY -m medbackdoor reproduce --protocol architectures \
  --seeds $SEEDS --jobs "${JOBS:-6}" --out "$W/architectures" "${STUDY_SET[@]}" "${EXTRA[@]}"
cat "$J" 2>/dev/null
