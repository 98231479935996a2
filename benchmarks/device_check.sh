#!/usr/bin/env bash
# One prepared GPU check of the photo training path (about 3-4 minutes on one H100/H200), one command:
#   bash benchmarks/device_check.sh <output folder>
# Makes its own Waterbirds-layout folder of 12,000 synthetic 320x320 JPEGs and runs
# benchmarks/gpu_throughput.py (ResNet-50 at 224, batch 128, bf16 autocast + channels-last):
# model-only ERM step, ERM through the loop, the data path alone (cache and JPEG decoding), run.py
# --mode erm end to end (between its epoch log lines) with the resume state saved every epoch and
# only at the end (--resume_every 100), the pruning step against the ERM step in channels-last, in
# NCHW and as run.py runs them (ERM channels-last, pruning NCHW), and feature extraction.
# Everything is logged, unfiltered, with tee to <output folder>/device_check.log as it arrives; the
# table also goes to throughput.json; the ratio and goal table is printed last.
# DEVICE_CHECK_TINY=1 shrinks every size and runs on the CPU (to check the script itself, ~2 minutes).
set -euo pipefail
OUT=${1:?output folder}
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PYTHONUNBUFFERED=1
if [[ "${DEVICE_CHECK_TINY:-0}" == 1 ]]; then
  N=96 SIDE=64 DEVICE=cpu FLAGS="--arch resnet18 --image_size 32 --batch_size 16 --workers 2 --steps 2 --decode_batches 2 --channels_last"
else
  N=12000 SIDE=320 DEVICE=cuda FLAGS="--amp --channels_last --workers $(( $(nproc) - 1 ))"
fi
{
  nvidia-smi -L || true
  git log -1 --format='commit %h %s' || true
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  start=$(date +%s)
  python3 benchmarks/photo_folder.py "$WORK/photos" --n "$N" --side "$SIDE"
  echo "photo folder: $(( $(date +%s) - start )) s"
  # shellcheck disable=SC2086
  python3 benchmarks/gpu_throughput.py --folder "$WORK/photos" --work "$WORK" --device "$DEVICE" $FLAGS \
    --json "$OUT/throughput.json"
  echo "device check total: $(( $(date +%s) - start )) s (the goal table above is the last thing gpu_throughput.py prints)"
} 2>&1 | tee "$OUT/device_check.log"
