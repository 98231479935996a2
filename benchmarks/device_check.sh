#!/usr/bin/env bash
# One prepared GPU check (CUDA path, bf16 mixed precision + channels-last, timing) and the
# Colored Fashion-MNIST PruSC comparison, for a machine with a CUDA device.
#   bash benchmarks/device_check.sh <fashion-mnist IDX folder> <output folder>
set -euo pipefail
FMNIST=${1:?fashion-mnist IDX folder}
OUT=${2:?output folder}
WORK=$(mktemp -d)
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
{
  nvidia-smi -L || true
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  for variant in "fp32:" "amp:--amp --channels_last"; do
    name=${variant%%:*}; flags=${variant#*:}
    start=$(date +%s)
    python3 run.py --device cuda $flags --out_dir "$WORK/digits_$name" 2>&1 | grep -v -i "warn\|prune epoch"
    echo "digits --mode all on cuda ($name): $(( $(date +%s) - start )) s"
    cp "$WORK/digits_$name/results.json" "$OUT/digits_${name}.json"
  done
  start=$(date +%s)
  python3 scripts/multi_seed.py --seeds 0 1 2 --out_dir "$WORK/fmnist" -- --device cuda --data cmnist \
    --mnist_source fashion --train_root_dir "$FMNIST" --label_noise 0 --spurious_ratio 0.95 --downsample \
    --batch_size 256 --epochs 10 --pruning_ep 2 --retrain_ep 10 2>&1 | grep -v -i "warn\|prune epoch"
  echo "fashion-mnist 3 seeds on cuda: $(( $(date +%s) - start )) s"
  cp "$WORK/fmnist/summary.json" "$OUT/fmnist_summary.json"
} 2>&1 | tee "$OUT/device_check.log"
