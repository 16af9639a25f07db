#!/usr/bin/env bash
# The main job: set up (or reuse) .venv, then run the end-to-end demo into reports/demo (or the folder given).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/pmoe demo --out "${1:-reports/demo}"
