#!/usr/bin/env bash
# A short real run on N GPUs (issue 18, item 3): vit-moe-tiny trained under torchrun with expert parallelism on a
# CIFAR-10-format folder of learnable blob images, then evaluated in one process; both accuracies are printed.
#   bash examples/multi_gpu_check.sh OUT_DIR [N_GPUS]
set -euo pipefail
out=${1:?OUT_DIR}; n=${2:-2}
export PYTHONPATH=src:tests
python -c "import sys; from pathlib import Path; from test_recipes import learnable_cifar10; learnable_cifar10(Path(sys.argv[1]), 2048, 512)" "$out/data"
torchrun --standalone --nproc-per-node "$n" -m pmoe train --model vit-moe-tiny --data cifar10 --data-dir "$out/data" \
    --epochs 2 --expert-parallel "$n" --out "$out/run" --json | tail -1 > "$out/train.json"
python -m pmoe eval "$out/run" --json | tail -1 > "$out/eval.json"
cat "$out/train.json" "$out/eval.json"
