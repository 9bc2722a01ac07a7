#!/usr/bin/env bash
# Wukong-Huahua text to image with the original's defaults:
#   bash infer.sh "城市夜景 赛博朋克"            (DPM-Solver++ 15 steps, 512x512, scale 7.5, seed 42)
#   bash infer.sh "来自深渊 风景 绘画 写实风格" --n_samples 4 --n_iter 4 --H 768
# Extra arguments pass through to scripts/txt2img.py (see --help). Images: output/samples/.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$HERE/.venv/bin/python" ]; then PY="$HERE/.venv/bin/python"; else PY=python3; fi
fi
if [ $# -lt 1 ] || [ -z "${1// /}" ]; then
  echo "usage: bash infer.sh \"<prompt>\" [txt2img options]   e.g. bash infer.sh \"城市夜景 赛博朋克\"" >&2
  exit 2
fi
PROMPT="$1"; shift
export GLOG_v="${GLOG_v:-3}"
exec "$PY" "$HERE/scripts/txt2img.py" --prompt "$PROMPT" --dpm_solver --ddim_steps 15 \
  --H 512 --W 512 --scale 7.5 --seed 42 --output_path output "$@"
