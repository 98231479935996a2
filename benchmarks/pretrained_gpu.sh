#!/usr/bin/env bash
# Issue 23's comparison in the paper's regime on one GPU: ResNet-50 at 224x224 from the pretrained
# stand-in, the same recipe as the 32-px CPU comparison of docs/recipe.md, one command:
#   bash benchmarks/pretrained_gpu.sh <output folder> [seed ...]        (default seeds: 0 1 2)
# 1. the Fashion scenes at 224 px, spurious ratio 0.95 (the comparison) and 0.5 (the calibration);
# 2. the stand-in: scripts/pretrain_backbone.py --arch resnet50 --size 224, 12 epochs, bf16 on the GPU;
# 3. the calibration: ERM from the stand-in at both ratios (seed 0);
# 4. scripts/sweep.py over the seeds: ERM, retrain-only, the mask without L_con, PruSC, DFR, JTT and
#    GroupDRO (3 ERM epochs at lr 1e-4, 20 pruning epochs), then --recipe original;
# 5. per seed, head-only retraining of the dense ERM model and of PruSC's mask (--mode retrain);
# 6. scripts/pretrained_table.py -> <output folder>/pretrained.md and pretrained.json.
# Everything is logged, unfiltered, with tee to <output folder>/pretrained_gpu.log as it arrives. The
# scenes, the stand-in and the runs go to $WORK (default <output folder>/work); rerunning the command
# reuses every finished step and continues the sweeps, so seeds can be added one call at a time.
# Estimated from the H200 rates of docs/performance.md (not yet measured): 2-3 minutes for steps 1-3,
# about 4 minutes per seed.
# METHODS replaces the method list of step 4; ORIGINAL=0 leaves out --recipe original.
# FASHION_DIR names the folder of the Fashion-MNIST IDX files where the Debian package is absent.
# PRETRAINED_TINY=1 shrinks every size and runs on the CPU with ResNet-18 at 32 px (to check the script).
set -euo pipefail
OUT=${1:?output folder}
shift
if (( $# )); then SEEDS=("$@"); else SEEDS=(0 1 2); fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=${WORK:-$OUT/work}
mkdir -p "$WORK"
FASHION=${FASHION_DIR:-/usr/share/datasets/fashion-mnist}
export PYTHONUNBUFFERED=1
if [[ "${PRETRAINED_TINY:-0}" == 1 ]]; then
  SIZE=32 ARCH=resnet18 N_CORPUS=120 CORPUS_EP=1
  GEN="--n_train 160 --n_val 80 --n_test 80 --workers 2"
  RUN="--device cpu --num_workers 0 --pruning_ep 1 --retrain_ep 1 --batch_size 32 --dfr_num_retrains 2"
  SPEED="--device cpu --workers 2"
else
  SIZE=224 ARCH=resnet50 N_CORPUS=12000 CORPUS_EP=12
  GEN="--workers $(nproc)"
  RUN="--device cuda --amp --channels_last --num_workers $(( $(nproc) - 1 )) --pruning_ep 20"
  SPEED="--device cuda --amp --workers $(nproc)"
fi
STAND_IN=$WORK/stand_in_${ARCH}_${SIZE}.pt
COMMON="--data waterbirds --image_size $SIZE --arch $ARCH --pretrained_path $STAND_IN --epochs 3 --lr 1e-4 --cache_dir $WORK/cache"
SWEEP="python3 scripts/sweep.py --workers 1 --seeds ${SEEDS[*]}"
{
  nvidia-smi -L || true
  git log -1 --format='commit %h %s' || true
  start=$(date +%s)
  for R in 0.95 0.5; do
    # shellcheck disable=SC2086
    [[ -f "$WORK/scenes_r$R/metadata.csv" ]] || python3 scripts/make_fashion_scenes.py "$WORK/scenes_r$R" \
      --size "$SIZE" --spurious_ratio "$R" --fashion_dir "$FASHION" $GEN
  done
  # shellcheck disable=SC2086
  [[ -f "$STAND_IN" ]] || python3 scripts/pretrain_backbone.py "$STAND_IN" --arch "$ARCH" --size "$SIZE" \
    --n_images "$N_CORPUS" --epochs "$CORPUS_EP" --fashion_dir "$FASHION" $SPEED
  echo "scenes and stand-in: $(( $(date +%s) - start )) s"
  for R in 0.95 0.5; do
    # shellcheck disable=SC2086
    [[ -f "$WORK/calibration_r$R/results.json" ]] || python3 run.py --mode erm $COMMON $RUN \
      --train_root_dir "$WORK/scenes_r$R" --seed 0 --out_dir "$WORK/calibration_r$R"
  done
  # shellcheck disable=SC2086
  $SWEEP --out_dir "$WORK/cmp_default" -- $COMMON $RUN --train_root_dir "$WORK/scenes_r0.95" \
    --methods "${METHODS:-erm,retrain_only,prusc_no_con,prusc,dfr,jtt,groupdro}"
  if [[ "${ORIGINAL:-1}" == 1 ]]; then
    # shellcheck disable=SC2086
    $SWEEP --out_dir "$WORK/cmp_original" --reference erm -- $COMMON $RUN --train_root_dir "$WORK/scenes_r0.95" \
      --recipe original --methods erm,prusc
  fi
  RETRAINED=()
  for S in "${SEEDS[@]}"; do
    D=$WORK/cmp_default/seed$S
    for ROW in retrain_only_head:erm.pt prusc_mask_head:prusc_pruned.pt; do
      NAME=${ROW%%:*} CKPT=$D/${ROW#*:}
      DIR=$WORK/head/${NAME}_seed$S
      [[ -f "$CKPT" ]] || continue
      # shellcheck disable=SC2086
      [[ -f "$DIR/results.json" ]] || python3 run.py --mode retrain $COMMON $RUN --train_root_dir "$WORK/scenes_r0.95" \
        --checkpoint "$CKPT" --cluster_checkpoint "$D/erm_epoch1.pt" --per_class --num_clusters 2 \
        --retrain_scope head --seed "$S" --data_seed "$S" --out_dir "$DIR"
      RETRAINED+=("$NAME=$DIR")
    done
  done
  FINISHED=()
  for D in "$WORK"/cmp_default/seed* "$WORK"/cmp_original/seed*; do
    [[ -f "$D/results.json" ]] && FINISHED+=("$D")
  done
  python3 scripts/pretrained_table.py --pretrained "$STAND_IN.json" \
    --calibration "0.95=$WORK/calibration_r0.95" "0.5=$WORK/calibration_r0.5" \
    --comparison "${FINISHED[@]}" --retrained "${RETRAINED[@]}" \
    --out_json "$OUT/pretrained.json" --out_md "$OUT/pretrained.md"
  echo "pretrained comparison total: $(( $(date +%s) - start )) s"
} 2>&1 | tee -a "$OUT/pretrained_gpu.log"
