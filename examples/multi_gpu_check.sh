#!/usr/bin/env bash
# A short real run on N GPUs (issue 18, item 3): vit-moe-tiny (8 experts) pretrained and then fine-tuned under
# torchrun with expert parallelism over the N GPUs on a CIFAR-10-format folder of learnable blob images; the gathered
# checkpoints are then evaluated, routed and pruned (router-norm change, half the experts) in one process, on one GPU
# and on the CPU. OUT/summary.json puts the ranks' accuracies beside the one-process ones.
#   bash examples/multi_gpu_check.sh OUT_DIR [N_GPUS]      (DEVICES="cpu": the one-process part on the CPU only)
set -euo pipefail
out=${1:?OUT_DIR}; n=${2:-2}
export PYTHONPATH=src:tests
python -c "import sys; from pathlib import Path; from test_recipes import learnable_cifar10; learnable_cifar10(Path(sys.argv[1]), 2048, 512)" "$out/data"
run() { torchrun --standalone --nproc-per-node "$n" -m pmoe "$@" --expert-parallel "$n" --json | tail -1; }
run train --model vit-moe-tiny --model-opt experts=8 --data cifar10 --data-dir "$out/data" --epochs 2 \
    --out "$out/pre" > "$out/pre.json"
run finetune "$out/pre" --data cifar10 --data-dir "$out/data" --data-opt 'class_subset=[0,1,2,3,4]' --epochs 2 \
    --out "$out/ft" > "$out/ft.json"
for device in ${DEVICES:-cuda cpu}; do
  python -m pmoe eval "$out/ft" --device "$device" --json | tail -1 > "$out/eval-$device.json"
  python -m pmoe route "$out/ft" --device "$device" --json | tail -1 > "$out/route-$device.json"
  python -m pmoe prune "$out/ft" --pretrained "$out/pre" --ratio 0.5 --device "$device" --json \
      --out "$out/pruned-$device" | tail -1 > "$out/prune-$device.json"
  python -m pmoe eval "$out/pruned-$device" --device "$device" --json | tail -1 > "$out/eval-pruned-$device.json"
done
python - "$out" "${DEVICES:-cuda cpu}" <<'EOF'
import json, sys
import torch
from pathlib import Path
out = Path(sys.argv[1])
read = lambda name: json.loads((out / f"{name}.json").read_text())
summary = {"ranks": {k: read(k)["test_accuracy"] for k in ("pre", "ft")}}
devices = sys.argv[2].split()
for device in devices:
    summary[device] = {"finetuned_accuracy": read(f"eval-{device}")["test_accuracy"],
                       "finetuned_loss": read(f"eval-{device}")["test_loss"],
                       "pruned_accuracy": read(f"eval-pruned-{device}")["test_accuracy"],
                       "kept": [layer["kept"] for layer in read(f"prune-{device}")["layers"]]}
freq = [torch.tensor(read(f"route-{d}")["frequency"]) for d in devices]
summary["route_max_difference"] = max(float((f - freq[0]).abs().max()) for f in freq)  # routing shares per device
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps(summary, indent=1))
EOF
