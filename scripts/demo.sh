#!/usr/bin/env bash
# The CPU demo: train a shallow FocalNet-T Mask R-CNN from scratch on the built-in tiny_shapes dataset,
# evaluate it (Detectron2's COCO box and mask AP tables), draw its predictions on validation
# images into output/demo/pictures/, and beside them its training curves (losses, learning rate,
# evaluation metrics; tools/plot_metrics.py). About 9 minutes on 2 CPU cores.
#   bash scripts/demo.sh [KEY VALUE ...]   (extra config overrides for the training run)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${DEMO_OUTPUT:-output/demo}
CONFIG=configs/Tiny/mask_rcnn_focalnet_tiny_shapes.yaml

start=$(date +%s)
ROOT=$($PY datasets/generate_tiny_shapes.py)  # generates the dataset once (cached), prints its folder
echo "[demo] tiny_shapes at $ROOT"
$PY tools/train_net.py --config-file "$CONFIG" OUTPUT_DIR "$OUT" "$@"
$PY tools/demo.py --config-file "$CONFIG" --input "$ROOT"/val/00000{0..7}.png --output "$OUT/pictures" --scale 3 \
  MODEL.WEIGHTS "$OUT/model_final.pth" "$@"
$PY tools/plot_metrics.py "$OUT" --output "$OUT/pictures"
echo "[demo] done in $(( $(date +%s) - start )) s: log in $OUT/log.txt, pictures and training curves in $OUT/pictures/"
