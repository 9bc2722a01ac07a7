#!/usr/bin/env bash
# Text to image with the original Wukong-Huahua defaults (DPM-Solver++ 15 steps, 512x512,
# scale 7.5, seed 42; from configs/wukong/v1-inference-chinese.yaml):
#   bash infer.sh "城市夜景 赛博朋克"
#   bash infer.sh "来自深渊 风景 绘画 写实风格" --n_samples 4 --n_iter 4 --H 768 --negative_prompt "模糊"
# Without models/wukong-huahua-ms.ckpt it uses the built-in shapes model when installed
# (models/shapes_zh/). Extra arguments pass through to scripts/txt2img.py (see --help), e.g.
# LoRA files with a weight each: bash infer.sh "城市夜景" --lora my_lora.ckpt:0.8 --lora style.safetensors
# Images: output/samples/NNNNN.png.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$HERE/.venv/bin/python" ]; then PY="$HERE/.venv/bin/python"; else PY=python3; fi
fi
ARGS=()
if [ $# -ge 1 ] && [ "${1#--}" = "$1" ]; then
  if [ -z "${1// /}" ]; then
    echo "error: the prompt is empty: bash infer.sh \"<prompt>\", e.g. bash infer.sh \"城市夜景 赛博朋克\"" >&2
    exit 2
  fi
  ARGS=(--prompt "$1"); shift
fi
export GLOG_v="${GLOG_v:-3}"
exec "$PY" "$HERE/scripts/txt2img.py" "${ARGS[@]}" --output_path output "$@"
