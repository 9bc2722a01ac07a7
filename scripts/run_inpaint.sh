#!/usr/bin/env bash
# Inpainting, as the original Wukong-Huahua scripts/run_inpaint.sh: repaint the white part of the mask.
#
#   bash scripts/run_inpaint.sh                                   # the demo below
#   bash scripts/run_inpaint.sh --n_samples 4 --seed 7            # extra flags go to scripts/inpaint.py
#   PROMPT="..." IMG=photo.png MASK=mask.png bash scripts/run_inpaint.sh
#
# With models/wukong-huahua-inpaint-ms.ckpt (download:
# https://download.mindspore.cn/toolkits/minddiffusion/wukong-huahua/wukong-huahua-inpaint-ms.ckpt) it
# runs the original's demo (prompt 一只红色的狐狸坐在长椅上, its image and mask from the original
# release's demo/inpaint/, to be copied there). Without it, scripts/inpaint.py falls back to the
# built-in shapes model, which inpaints by blended latent diffusion; the demo then adds a blue square
# to the right of models/shapes_zh/demo/scene.png. Images: output/inpaint/samples/NNNNN.png,
# grids (image | mask | results) in output/inpaint/grids/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
export GLOG_v="${GLOG_v:-3}"
if [ -f "$ROOT/models/wukong-huahua-inpaint-ms.ckpt" ]; then
  PROMPT="${PROMPT:-一只红色的狐狸坐在长椅上}"
  IMG="${IMG:-$ROOT/demo/inpaint/overture-creations-5sI6fQgYIuo.png}"
  MASK="${MASK:-$ROOT/demo/inpaint/overture-creations-5sI6fQgYIuo_mask.png}"
else
  PROMPT="${PROMPT:-一个红色的圆形在左边，一个蓝色的正方形在右边}"
  IMG="${IMG:-$ROOT/models/shapes_zh/demo/scene.png}"
  MASK="${MASK:-$ROOT/models/shapes_zh/demo/scene_mask_right.png}"
fi
exec "$PY" "$ROOT/scripts/inpaint.py" \
    --prompt "$PROMPT" \
    --img "$IMG" \
    --mask "$MASK" \
    --output_path output/inpaint "$@"
