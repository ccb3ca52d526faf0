#!/usr/bin/env bash
# Installs lift3d's dependencies into the current Python environment. Nothing is compiled.
# torch comes first and an installed torch is kept, so pip never replaces it (requirements.txt
# accepts torch>=2.1). To pick a CPU-only or a specific CUDA build, install torch yourself first,
# or set TORCH_INDEX_URL to your PyTorch wheel index.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! $PY -c "import torch" >/dev/null 2>&1; then
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    $PY -m pip install "torch==2.13.0" --index-url "$TORCH_INDEX_URL"
  else
    $PY -m pip install "torch==2.13.0"
  fi
fi
$PY -m pip install -q -r requirements-dev.txt
