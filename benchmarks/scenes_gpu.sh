#!/usr/bin/env bash
# The Fashion-scenes comparison with ResNet-50 at 224x224 on one GPU, one command (about 5 minutes
# on one H200: 215 s without GroupDRO, which adds about another ERM's 90 s):
#   bash benchmarks/scenes_gpu.sh <output folder> [seed]
# Generates the default Fashion-scenes set at 224x224 (ratio 0.95; Waterbirds' sizes), then runs
# run.py --mode all with ResNet-50 from scratch (no ImageNet weights offline), bf16 + channels-last:
# ERM, retrain-only, the mask without L_con, PruSC, GroupDRO and DFR (JTT's upsampled split, about
# ten times the training set with its defaults, would not fit the time). Everything is logged with
# tee to <output folder>/scenes_gpu.log; results.json and report.png are copied there.
# METHODS replaces the list of methods (comma-separated).
# FASHION_DIR names the folder of the Fashion-MNIST IDX files where the Debian package is absent.
# SCENES_TINY=1 shrinks every size and runs on the CPU with ResNet-18 (to check the script itself).
set -euo pipefail
OUT=${1:?output folder}
SEED=${2:-0}
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PYTHONUNBUFFERED=1
if [[ "${SCENES_TINY:-0}" == 1 ]]; then
  GEN="--size 32 --n_train 200 --n_val 80 --n_test 80" SIZE=32
  RUN="--device cpu --arch resnet18 --epochs 1 --pruning_ep 1 --retrain_ep 1 --num_workers 0"
else
  GEN="--size 224" SIZE=224
  RUN="--device cuda --amp --channels_last --arch resnet50 --epochs 30 --pruning_ep 2 --retrain_ep 2 --num_workers $(( $(nproc) - 1 ))"
fi
{
  nvidia-smi -L || true
  git log -1 --format='commit %h %s' || true
  start=$(date +%s)
  # shellcheck disable=SC2086
  python3 scripts/make_fashion_scenes.py "$WORK/scenes" $GEN --workers "$(nproc)" \
    --fashion_dir "${FASHION_DIR:-/usr/share/datasets/fashion-mnist}"
  # shellcheck disable=SC2086
  python3 run.py --mode all --data waterbirds --train_root_dir "$WORK/scenes" --image_size "$SIZE" $RUN \
    --cache_dir "$WORK/cache" --seed "$SEED" --out_dir "$WORK/run" \
    --methods "${METHODS:-erm,retrain_only,prusc_no_con,prusc,groupdro,dfr}" 2>&1 | grep --line-buffered -v -i "warn"
  cp "$WORK/run/results.json" "$WORK/run/report.png" "$OUT/"
  echo "scenes comparison total: $(( $(date +%s) - start )) s"
} 2>&1 | tee "$OUT/scenes_gpu.log"
