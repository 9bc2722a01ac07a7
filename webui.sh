#!/usr/bin/env bash
# The local web page (after `bash scripts/setup.sh webui`):
#   bash webui.sh                 http://127.0.0.1:7860 (this machine only)
#   bash webui.sh --port 7861
#   bash webui.sh --listen        every network interface (prints a warning)
# Images go to output/ as with infer.sh and the scripts (--output_path to change).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$HERE/.venv/bin/python" ]; then PY="$HERE/.venv/bin/python"; else PY=python3; fi
fi
export GLOG_v="${GLOG_v:-3}" GRADIO_ANALYTICS_ENABLED=False
cd "$HERE"
exec "$PY" -m mind_diffusion.webui "$@"
