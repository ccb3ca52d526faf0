#!/usr/bin/env bash
# Installs lift3d's dependencies and runs the test suite (CPU, tiny models).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/install.sh
# The default suite leaves out the end-to-end runs marked slow (minutes each on 2 cores);
# `bash scripts/test.sh -m slow` runs those, `-m "slow or not slow"` runs everything. CI runs both.
# Tests run on pytest-xdist workers, whole files per worker (LIFT3D_TEST_WORKERS, default 2 = this project's
# CI cores; 0 runs them in this process).
WORKERS=${LIFT3D_TEST_WORKERS:-2}
XDIST=()
if [ "$WORKERS" != "0" ]; then XDIST=(-n "$WORKERS" --dist loadfile); fi
$PY -m pytest tests -q -ra -m "not slow" "${XDIST[@]}" "$@"
