#!/bin/sh
# The main job, end to end: start finetunerd on a fresh data directory, push Fashion-MNIST
# train (60,000) and test (10,000), submit an mlp run through the finetuner client, follow its
# log, print the before/after metrics, download the best model and stop the daemon.
# Run from the repository root via `make demo`.
set -eu

BIN=${BIN:-build}
DATA=${DEMO_DATA:-demo-data}
PORT=${DEMO_PORT:-8910}
FM=/usr/share/datasets/fashion-mnist
URL=http://127.0.0.1:$PORT
export FINETUNER_URL=$URL
FT="$BIN/finetuner"

rm -rf "$DATA"
mkdir -p "$DATA"
"$BIN/finetunerd" --port "$PORT" --data-dir "$DATA/finetunerd" >"$DATA/finetunerd.log" 2>&1 &
DAEMON=$!
stop_daemon() {
    kill -TERM "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null || true
}
trap stop_daemon EXIT INT TERM

i=0
until curl -sf "$URL/api/v1/health" >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -gt 100 ] || ! kill -0 "$DAEMON" 2>/dev/null; then
        echo "finetunerd did not start; its log:" >&2
        cat "$DATA/finetunerd.log" >&2
        exit 1
    fi
    sleep 0.1
done
echo "== finetunerd is up at $URL (log: $DATA/finetunerd.log)"

echo "== pushing Fashion-MNIST"
"$FT" dataset push fashion-mnist-train \
    --images "$FM/train-images-idx3-ubyte.gz" --labels "$FM/train-labels-idx1-ubyte.gz"
"$FT" dataset push fashion-mnist-test \
    --images "$FM/t10k-images-idx3-ubyte.gz" --labels "$FM/t10k-labels-idx1-ubyte.gz"

echo "== finetuning mlp 784 -> 256 -> 128 (l2) with TripletMarginLoss"
"$FT" fit --experiment demo --run-name mlp-fashion-mnist \
    --model mlp \
    --model-options '{"input_size": 784, "hidden_sizes": [256, 128], "activation": "relu", "l2": true}' \
    --train-data fashion-mnist-train --eval-data fashion-mnist-test \
    --loss TripletMarginLoss --loss-options '{"margin": 0.2, "distance": "euclidean"}' \
    --optimizer Adam --learning-rate 0.001 --epochs 10 --batch-size 128 --seed 42 \
    --callback 'EvaluationCallback:{"query_data": "fashion-mnist-test", "limit": 20}' \
    --callback 'BestModelCheckpoint:{"monitor": "mlp_average_precision"}' \
    --callback 'EarlyStopping:{"monitor": "mlp_average_precision", "patience": 2, "min_delta": 0.001}' \
    --follow

echo "== status"
"$FT" status demo mlp-fashion-mnist
echo "== metrics before and after finetuning"
"$FT" metrics demo mlp-fashion-mnist
"$FT" artifact demo mlp-fashion-mnist -o "$DATA/mlp-fashion-mnist.safetensors"
echo "== the best model: $DATA/mlp-fashion-mnist.safetensors ($(wc -c <"$DATA/mlp-fashion-mnist.safetensors") bytes, safetensors)"
