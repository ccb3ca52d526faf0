#!/usr/bin/env bash
# Installs lift3d and runs the main job on its embedded default: USD text-to-3D of "a red cube" on
# the shipped toy prior (load/priors/toy-sd), on CPU in a few minutes — training, then the test pass
# (turntable video), then a mesh export. Other prompts: bash scripts/demo.sh system.prompt_processor.prompt="a blue sphere"
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/install.sh
$PY launch.py --config configs/demo/text-to-3d.yaml --train --export "$@"  # fit, test pass, export: one process
trial=$(ls -td outputs/demo-text-to-3d/*/ | head -n 1)
echo "Turntable video: $(ls "${trial}"save/*.mp4)"
echo "Mesh:            $(ls "${trial}"save/*-export/*)"
