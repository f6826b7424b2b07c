#!/usr/bin/env bash
# Snakemake runs this once after it created the conda environment of envs/qmroct.yaml, inside
# that environment and from the workflow's working directory (this checkout). The rules'
# scripts import qmroct: install it editable from the checkout, so the environment runs the
# checkout's code (the code the algorithm identities cover), and without dependencies: the
# environment file pins every one of them at the lock's version.
set -euo pipefail
if [ ! -f pyproject.toml ] || [ ! -d src/qmroct ]; then
  echo "envs/qmroct.post-deploy.sh: run snakemake from the qmroct checkout ($PWD is not)" >&2
  exit 2
fi
python -m pip install --no-deps -e . --config-settings editable_mode=compat
python -c "import qmroct; print('qmroct', qmroct.__version__, 'in', qmroct.__file__)"
