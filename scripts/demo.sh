#!/usr/bin/env bash
# Installs lift3d and runs the main job on its embedded default: a NeRF reconstructed from the
# shipped reference mesh (load/shapes/), on CPU in a few minutes; then exports a mesh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/install.sh
$PY launch.py --config configs/reconstruct-nerf.yaml --train "$@"
trial=$(ls -td outputs/reconstruct-nerf/*/ | head -n 1)
$PY launch.py --config "${trial}configs/parsed.yaml" --export resume="${trial}ckpts/last.ckpt"
echo "Turntable video: $(ls "${trial}"save/*.mp4)"
echo "Mesh:            $(ls "${trial}"save/*-export/*)"
