#!/usr/bin/env bash
# Build the qmroct worker image (see images/README.md). Arguments go to build_worker_image.py:
#   images/build-worker-image.sh --cloud mycloud --base-image debian-12 --flavor m1.medium \
#       --network private --name qmroct-worker-$(date +%Y%m%d)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="${PYTHON:-$HERE/../.venv/bin/python}"
exec "$PY" "$HERE/build_worker_image.py" "$@"
