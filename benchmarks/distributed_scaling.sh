#!/usr/bin/env bash
# Scaling of training throughput over 1..G GPUs (issue 18, item 2): vit-s (dense) and vit-moe-s (patch router, K=1)
# under `benchmarks/distributed_training.py`, data parallel on 1, 2, 4, .. G GPUs and DP x EP with EP = 2, 4, .. G;
# then OUT/scaling.md: images/s, per GPU, scaling efficiency (per GPU / one GPU's), all-to-all and other collective
# shares of the step time.
#   bash benchmarks/distributed_scaling.sh OUT [G] [EXTRA FLAGS of distributed_training.py...]
set -euo pipefail
out=${1:?OUT}; g=${2:-$(python -c "import torch; print(torch.cuda.device_count())")}; shift $(( $# > 1 ? 2 : 1 ))
export PYTHONPATH=src NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
mkdir -p "$out"
bench() {  # NAME GPUS [flags]
  local name=$1 n=$2; shift 2
  torchrun --standalone --nproc-per-node "$n" benchmarks/distributed_training.py "$@" --out "$out/$name.json" \
      > "$out/$name.log" 2>&1 || { echo "failed: $name (see $out/$name.log)"; return 0; }
  tail -1 "$out/$name.log"
}
moe=(--model vit-moe-s --model-opt router=patch --model-opt num_selected=1)
for ((n = 1; n <= g; n *= 2)); do
  bench "vit-s-dp$n" "$n" --model vit-s "$@"
  bench "vit-moe-s-dp$n" "$n" "${moe[@]}" "$@"
  for ((e = 2; e <= n; e *= 2)); do bench "vit-moe-s-dp$((n / e))-ep$e" "$n" "${moe[@]}" --expert-parallel "$e" "$@"; done
done
python - "$out" <<'EOF'
import json, sys
from pathlib import Path
from pmoe.reports import markdown_table
out = Path(sys.argv[1])
rows = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
one = {r["model"]: r["images_per_second"] for r in rows if r["world"] == 1}
rows.sort(key=lambda r: (r["model"], r["world"], r["expert_parallel"]))
table = markdown_table(
    ["model", "GPUs", "EP", "images/s", "per GPU", "scaling efficiency", "all-to-all share", "other collectives"],
    [[r["model"], r["world"], r["expert_parallel"], r["images_per_second"], r["images_per_second_per_rank"],
      round(r["images_per_second_per_rank"] / one[r["model"]], 3) if r["model"] in one else "",
      r["all_to_all"], r["other_collectives"]] for r in rows])
(out / "scaling.md").write_text(f"{rows[0]['device']}, torch {rows[0]['torch']}, batch {rows[0]['batch_per_rank']} "
                                f"per GPU, {rows[0]['image_size']}² images, bf16 autocast\n\n{table}\n")
print(table)
EOF
