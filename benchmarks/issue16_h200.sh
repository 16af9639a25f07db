#!/usr/bin/env bash
# Issue 16's measurements on one GPU in one call, in the order that matters most (each step stops at its own limit,
# so that one slow compile cannot take the rest down): the fused kernels' CUDA test (it compiles some 60 kernel
# variants: about 3 minutes), each fused GEMM against cuBLAS, the layers (bf16 weights, the fused one profiled;
# autocast) and ViT-MoE-S training eager with fused patch layers. About 10 minutes on an H200 (the limits add up to
# 580 s). Results (JSON + markdown, and every step's log) land in OUT; BENCHMARKS.md quotes them.
#   bash benchmarks/issue16_h200.sh OUT
set -u
out=${1:?usage: issue16_h200.sh OUT}
mkdir -p "$out"
export PYTHONPATH=${PYTHONPATH:-src} PYTHONUNBUFFERED=1
step() {  # step SECONDS NAME COMMAND...: run with a limit, log to OUT/NAME.log, report the wall time
  local limit=$1 name=$2 start=$SECONDS
  shift 2
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  echo "$name: exit $? after $((SECONDS - start)) s"
}
V=(--variants patch "patch fused" straightforward "token K=2")
step 240 test_fused env PMOE_TEST_DEVICE=cuda python -m pytest -q -rs tests/test_fused.py
step 80 fused_kernels python benchmarks/fused_kernels.py --size vit-b --out "$out/fused_kernels_h200"
step 80 layers_bf16w python benchmarks/moe_layers.py --sizes vit-s vit-b --dtype bfloat16 --weights bfloat16 \
    --no-bias "${V[@]}" --profile "patch fused" --out "$out/moe_layers_h200_bf16w"
step 110 vit_eager python benchmarks/vit_training.py --batch 256 --variants "vit-s (dense)" "vit-moe-s patch K=1" \
    "vit-moe-s patch K=1 fused" "vit-moe-s token K=1" --out "$out/vit_training_h200_eager"
step 70 layers_autocast python benchmarks/moe_layers.py --sizes vit-s vit-b --dtype bfloat16 "${V[@]}" \
    --out "$out/moe_layers_h200_autocast"
tail -n 3 "$out"/*.log
