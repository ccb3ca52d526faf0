#!/usr/bin/env bash
# Installs lift3d's dependencies and runs the test suite (CPU, tiny models).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/install.sh
$PY -m pytest tests -q -ra "$@"
