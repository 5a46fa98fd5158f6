#!/usr/bin/env bash
# Evaluate a model on the synthetic hold-out set (phantom seeds from 10 000 000, never used in
# training) with the project's own command-line tools, as a user would:
#
#   scripts/eval_holdout.sh [MODEL] [OUT] [COUNT]
#   SEGMENT_ARGS=--no-tta scripts/eval_holdout.sh …   # without flip TTA (the default is with)
#
# MODEL defaults to the shipped model, OUT to runs/holdout, COUNT to 50 ears (alternating
# left/right; a third in random contrast). Writes OUT/holdout_metrics.tsv (per ear: Dice, HD,
# HD95, mean surface distance, volumes), OUT/holdout_structures.tsv (per-structure recall and
# Dice) and prints the summary of all ears and per phantom contrast (SPACE-like, random).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
MODEL=${1:-}
OUT=${2:-runs/holdout}
COUNT=${3:-50}

if [[ ! -f $OUT/masks/holdout-$(printf %04d $((COUNT - 1)))_desc-right.nii.gz &&
      ! -f $OUT/masks/holdout-$(printf %04d $((COUNT - 1)))_desc-left.nii.gz ]]; then
  "$BIN/ievnet-synth" holdout --out-dir "$OUT" --count "$COUNT"
fi
model_args=()
[[ -n $MODEL ]] && model_args=(--model "$MODEL")
# shellcheck disable=SC2086  # SEGMENT_ARGS: extra ievnet-segment options, word-split on purpose
"$BIN/ievnet-segment" "$OUT"/images/*.nii.gz -o "$OUT/pred" "${model_args[@]}" ${SEGMENT_ARGS:-}
"$BIN/ievnet-eval" --pred "$OUT/pred" --ref "$OUT/masks" --pred-suffix _mask \
  --out "$OUT/holdout_metrics.tsv"
"$BIN/python" scripts/holdout_structures.py "$OUT" > "$OUT/holdout_structures.txt"
cat "$OUT/holdout_structures.txt"
