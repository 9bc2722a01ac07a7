#!/usr/bin/env bash
# Taichu-GLIDE text to image with the original scripts/run_infer.sh settings: Chinese prompts,
# 60 base steps, 27 super-resolution steps, 4 pictures per prompt, the prompts file of the
# original (data/prompts.txt there, configs/glide/prompts.txt here).
#
#   bash scripts/run_glide_infer.sh                                   # every prompt in the file
#   bash scripts/run_glide_infer.sh "一个红色的圆形在左边"              # one prompt (first argument)
#   CKPT_PATH=/glide/pretraind_models PROMPTS_FILE=my_prompts.txt bash scripts/run_glide_infer.sh
#   bash scripts/run_glide_infer.sh --stages 256 --seed 7            # extra flags pass through
#
# CKPT_PATH (default models/glide; the original used /glide/pretraind_models/) holds
# glide_gen.ckpt, glide_super_res.ckpt, srgan.ckpt and cog-pretrain.model from
# https://download.mindspore.cn/toolkits/minddiffusion/Taichu-GLIDE/. Without CKPT_PATH, when
# models/glide lacks them, the built-in shapes-world GLIDE (models/glide_shapes, or the folder
# GLIDE_BUILTIN names) runs instead with its own config and sampling defaults, and one line says
# so; a CKPT_PATH that lacks them is an error. The original's settings apply to the Taichu-GLIDE
# config only (--official_set); flags given here override either. Images: OUTPUT (default
# output/glide)/samples/ and strips/. PYTHON overrides the interpreter (default: .venv/bin/python).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
ARGS=()
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then ARGS+=(--prompt "$1"); shift
elif [ -n "${PROMPTS_FILE:-}" ]; then ARGS+=(--prompts_file "$PROMPTS_FILE"); fi
if [ -n "${CKPT_PATH:-}" ]; then ARGS+=(--ckpt_path "$CKPT_PATH"); fi
OUTPUT="${OUTPUT:-output/glide}"
export GLOG_v="${GLOG_v:-3}"
exec "$PY" "$ROOT/scripts/glide_txt2img.py" \
  --official_set sampling.num_inference_steps=60 sampling.super_res_steps=27 \
                 sampling.num_images_per_prompt=4 tokenizer.is_chinese=true \
  --output_path "$OUTPUT" \
  ${ARGS[@]+"${ARGS[@]}"} \
  "$@"
