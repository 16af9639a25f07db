#!/usr/bin/env bash
# Create (or reuse) .venv and install pmoe with every extra. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
# Fashion-MNIST, the embedded default data, comes from Debian's dataset-fashion-mnist.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
    || echo "warning: could not install dataset-fashion-mnist; pass --data-dir to a folder of IDX files" >&2
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# The CPU build of torch first: a bare 'torch' requirement could pull a multi-GB CUDA build.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[dev,hf]"
# Triton runs the fused MoE kernels' tests on CPU (TRITON_INTERPRET=1). CUDA builds of torch bring their own, pinned
# Triton; a CPU build brings none: take one whose interpreter works with numpy 2.4.
.venv/bin/python -c "import triton" 2>/dev/null || .venv/bin/pip install -q "triton>=3.9"
