#!/usr/bin/env bash
# Create .venv-nova/ at the repository root: Nova 34 + Placement + Nova's test-only
# dependencies, kept apart from the workflow's environment (Nova pins eventlet,
# oslo.* and SQLAlchemy). Also checks for OpenSSH's sshd, which every fake server runs.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${NOVA_VENV:-$ROOT/.venv-nova}"
PY="${PYTHON:-python3}"
if [ ! -x /usr/sbin/sshd ] || ! command -v ssh-keygen >/dev/null; then
    echo "sshd/ssh-keygen missing: apt-get update && apt-get install -y openssh-server openssh-client" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q \
    nova==34.0.0 openstack-placement==16.0.0 \
    testtools==2.9.1 oslotest==6.1.1 wsgi-intercept==1.13.1 requests-mock==1.12.1 ddt==1.7.2
"$VENV/bin/python" -c "import nova.virt.fake, placement" && echo "nova test cloud venv ready: $VENV"
