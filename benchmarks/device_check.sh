#!/usr/bin/env bash
# One prepared GPU check of the photo training path (about 4 minutes on one H100/H200), one command:
#   bash benchmarks/device_check.sh <output folder>
# Makes its own Waterbirds-layout folder of 12,000 synthetic 320x320 JPEGs, prints the throughput
# table of benchmarks/gpu_throughput.py (ResNet-50 at 224, batch 128, bf16 autocast + channels-last):
# model-only ERM step, ERM through the loop, the data path alone (cache and JPEG decoding), run.py
# --mode erm end to end, the pruning step against the ERM step, feature extraction, and the ratios.
# Then runs `run.py` (--mode all on Colored Digits) in fp32 and bf16 for the accuracy numbers.
# Everything is logged with tee to <output folder>/device_check.log; the table also goes to throughput.json.
# DEVICE_CHECK_TINY=1 shrinks every size and runs on the CPU (to check the script itself).
set -euo pipefail
OUT=${1:?output folder}
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PYTHONUNBUFFERED=1
if [[ "${DEVICE_CHECK_TINY:-0}" == 1 ]]; then
  N=96 SIDE=64 DEVICE=cpu FLAGS="--arch resnet18 --image_size 32 --batch_size 16 --workers 2 --steps 2 --decode_batches 2"
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
    --json "$OUT/throughput.json" 2>&1 | grep --line-buffered -v -i "warn"
  echo "throughput check: $(( $(date +%s) - start )) s"
  for variant in "fp32:" "amp:--amp --channels_last"; do
    name=${variant%%:*}; flags=${variant#*:}
    [[ "$DEVICE" == cpu && "$name" == amp ]] && continue
    t0=$(date +%s)
    # shellcheck disable=SC2086
    python3 run.py --device "$DEVICE" $flags --out_dir "$WORK/digits_$name" 2>&1 | grep --line-buffered -v -i "warn\|prune epoch"
    echo "digits --mode all on $DEVICE ($name): $(( $(date +%s) - t0 )) s"
    cp "$WORK/digits_$name/results.json" "$OUT/digits_${name}.json"
  done
  echo "device check total: $(( $(date +%s) - start )) s"
} 2>&1 | tee "$OUT/device_check.log"
