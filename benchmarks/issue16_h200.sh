#!/usr/bin/env bash
# Issue 16's recorded H200 run (round 8), in two parts that each fit one device call of 10 minutes (run them back to
# back on one machine; each step stops at its own limit, so that one slow compile cannot take the rest down):
#   eager:    the layers at every size with autocast (every variant) and with bf16 weights (the fused one too), their
#             profiles at ViT-B size, ViT-MoE-S training eager (every variant, the fused patch layers too) and the
#             profiles of a dense and a patch K=1 training step
#   compiled: the layers and ViT-MoE-S training under torch.compile, and whether the fused layer compiles
# Results (JSON + markdown, and every step's log) land in OUT; BENCHMARKS.md quotes them.
#   bash benchmarks/issue16_h200.sh OUT eager|compiled
set -u
out=${1:?usage: issue16_h200.sh OUT eager|compiled} part=${2:?usage: issue16_h200.sh OUT eager|compiled}
mkdir -p "$out"
export PYTHONPATH=${PYTHONPATH:-src} PYTHONUNBUFFERED=1
step() {  # step SECONDS NAME COMMAND...: run with a limit, log to OUT/NAME.log, report the wall time
  local limit=$1 name=$2 start=$SECONDS
  shift 2
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  echo "$name: exit $? after $((SECONDS - start)) s"
}
L=(python benchmarks/moe_layers.py --dtype bfloat16)
S=(--sizes theory small vit-s vit-b)
V=(--variants patch straightforward "token K=2")
T=(python benchmarks/vit_training.py --batch 256)
case $part in
eager)
  step 150 layers_autocast "${L[@]}" "${S[@]}" --out "$out/moe_layers_h200_autocast"
  step 80 layers_bf16w "${L[@]}" "${S[@]}" --weights bfloat16 --no-bias "${V[@]}" "patch fused" \
      --out "$out/moe_layers_h200_bf16w"
  step 50 layers_profile "${L[@]}" --sizes vit-b --weights bfloat16 --no-bias "${V[@]}" "patch fused" \
      --profile patch "patch fused" straightforward "token K=2" --reps 10 --out "$out/moe_layers_h200_bf16w_profile"
  step 90 vit_eager "${T[@]}" --variants "vit-s (dense)" "vit-moe-s patch K=1" "vit-moe-s token K=1" \
      "vit-moe-s patch K=2" "vit-moe-s token K=2" "vit-moe-s patch K=1 fused" --out "$out/vit_training_h200_eager"
  step 40 vit_profile "${T[@]}" --steps 5 --variants "vit-moe-s patch K=1" --profile "vit-s (dense)" \
      "vit-moe-s patch K=1" --out "$out/vit_training_h200_eager_profile"
  ;;
compiled)
  step 240 layers_compile "${L[@]}" "${S[@]}" --compile "${V[@]}" --out "$out/moe_layers_h200_compile"
  step 240 vit_compile "${T[@]}" --compile --variants "vit-s (dense)" "vit-moe-s patch K=1" "vit-moe-s token K=1" \
      "vit-moe-s patch K=2" "vit-moe-s token K=2" --out "$out/vit_training_h200_compile"
  step 60 layers_compile_fused "${L[@]}" --sizes vit-b --weights bfloat16 --no-bias --compile --variants "patch fused" \
      --out "$out/moe_layers_h200_compile_fused"
  ;;
*) echo "usage: issue16_h200.sh OUT eager|compiled" >&2; exit 2 ;;
esac
tail -n 3 "$out"/*.log
