#!/usr/bin/env bash
# The whole pipeline on the embedded SYNTHETIC data, offline:
# synth (simplified ndjson strokes) -> convert (rasterized exactly like the official bitmaps)
# -> train -> export -> evaluate -> predict (PNGs and strokes).
# Everything lands in demo/ (git-ignored); rerunning starts it afresh. It installs the runtime
# dependencies only (scripts/test.sh adds the dev extra). Sized to take about 2 minutes after the
# install on 2 cores without bf16 (README: Measured); EPOCHS and TRAIN (drawings per class) scale it,
# TRAIN_OPTIONS adds options to its `qdkit train` (TRAIN_OPTIONS=--no-amp: float32, as without bf16).
set -euo pipefail
cd "$(dirname "$0")/.."
QDKIT_EXTRAS="${QDKIT_EXTRAS-}"
source scripts/_venv.sh

EPOCHS="${EPOCHS:-3}"
TRAIN="${TRAIN:-600}"
started=$SECONDS
rm -rf demo
qdkit synth demo/raw --classes 10 --per-class $((TRAIN + 200)) --seed 0 --format ndjson
qdkit convert --in demo/raw --out demo/data --h5 --seed 0 --train "$TRAIN" --validation 100 --test 100
qdkit info demo/data/quickdraw.h5
# shellcheck disable=SC2086  # word splitting intended: TRAIN_OPTIONS holds options
qdkit train --data demo/data/quickdraw.h5 --epochs "$EPOCHS" --run-name demo \
    --runs-dir demo/runs --artifacts-dir demo/artifacts ${TRAIN_OPTIONS:-}
qdkit export demo/artifacts/demo/best.pt
qdkit evaluate --model demo/artifacts/demo/model.onnx --data demo/data/quickdraw.h5 --split test
qdkit visualize --model demo/artifacts/demo/model.onnx --data demo/data/quickdraw.h5 --out demo/classification.png
# One test PNG of each class, predicted from the files alone.
pngs=()
for folder in demo/data/png/test/*/; do
    first=("$folder"*.png)
    pngs+=("${first[0]}")
done
qdkit predict --model demo/artifacts/demo/model.onnx --top-k 3 "${pngs[@]}"
# The first three drawings of one stroke file, predicted from their strokes.
head -n 3 demo/raw/full_simplified_star.ndjson > demo/stars.ndjson
qdkit predict --model demo/artifacts/demo/model.onnx --top-k 3 demo/stars.ndjson
echo
echo "demo done in $((SECONDS - started)) s: model demo/artifacts/demo/model.onnx, pictures demo/classification.png and"
echo "demo/artifacts/demo/confusion_matrix.png, curves demo/artifacts/demo/curves.png;"
echo "TensorBoard: tensorboard --logdir demo/runs"
echo
echo "Draw and watch the model guess (the page opens in your browser; Ctrl-C stops the server):"
echo "  qdkit serve demo/artifacts/demo/model.onnx --open"
