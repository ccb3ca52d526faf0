#!/usr/bin/env bash
# The GPU check (issue 20): every GPU figure in one run, under 9 minutes on one H100.
#
#   bash benchmarks/gpu_check.sh             # on the GPU machine: results in $OUT (or benchmarks/gpu_results/)
#   bash benchmarks/gpu_check.sh --dry-run   # CPU rehearsal with tiny models (tests/test_gpu_check_dryrun.py)
#
# The GPU machine has torch, Triton and nvcc but no package registry: the Python packages lift3d needs
# beyond what is there travel as wheels in .wheels/ (ignored by git; name it in the device tool's
# `carry`). Prepare that folder on a machine with registry access, from the repository root:
#
#   echo /.wheels/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .wheels omegaconf==2.4.0 antlr4-python3-runtime==4.13.2 diffusers==0.42.1 importlib_metadata==10.2.0 \
#     trimesh==5.2.0 xatlas==0.0.11
#
# (7.6 MB; the versions are those of this project's CPU environment; everything else in
# requirements.txt is in the GPU image already.) This script installs every wheel in .wheels/ whose
# package is not installed yet (no index, no dependency resolution), then runs benchmarks/gpu_check.py.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

WHEELS_CMD='python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .wheels omegaconf==2.4.0 antlr4-python3-runtime==4.13.2 diffusers==0.42.1 importlib_metadata==10.2.0 trimesh==5.2.0 xatlas==0.0.11'

if [ -d .wheels ] && ls .wheels/*.whl >/dev/null 2>&1; then
  # wheels whose distribution is missing here (a wheel's file name starts with its normalised name)
  missing=$($PY - <<'EOF'
import glob, importlib.metadata as md, os, re
for whl in sorted(glob.glob(".wheels/*.whl")):
    name = os.path.basename(whl).split("-")[0]
    try:
        md.version(re.sub(r"[-_.]+", "-", name))
    except md.PackageNotFoundError:
        print(whl)
EOF
)
  if [ -n "$missing" ]; then
    echo "gpu_check: installing from .wheels/: $(echo $missing | tr '\n' ' ')"
    # shellcheck disable=SC2086
    $PY -m pip install -q --no-index --no-deps --find-links .wheels $missing || {
      echo "gpu_check: installing the carried wheels failed"; exit 2; }
  fi
fi

if ! $PY -c "import omegaconf, diffusers, transformers, trimesh" 2>/dev/null; then
  echo "gpu_check: a package lift3d needs is missing ($PY -c 'import omegaconf, diffusers, transformers, trimesh' fails)."
  echo "Carry them as wheels: on a machine with registry access, in the repository root, run"
  echo "  echo /.wheels/ >> .git/info/exclude"
  echo "  $WHEELS_CMD"
  echo "then carry .wheels with the working tree and run this script again."
  exit 2
fi
echo "gpu_check: wheels folder for a registry-less GPU machine: $WHEELS_CMD"

exec $PY benchmarks/gpu_check.py "$@"
