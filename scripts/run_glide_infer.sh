#!/usr/bin/env bash
# Taichu-GLIDE text to image with the original scripts/run_infer.sh settings: Chinese prompts,
# 60 base steps, 27 super-resolution steps, 4 pictures per prompt, the prompts file of the
# original (data/prompts.txt there, configs/glide/prompts.txt here).
#
#   bash scripts/run_glide_infer.sh                                   # every prompt in the file
#   CKPT_PATH=/glide/pretraind_models PROMPTS_FILE=my_prompts.txt bash scripts/run_glide_infer.sh
#   bash scripts/run_glide_infer.sh --stages 256 --seed 7            # extra flags pass through
#
# CKPT_PATH (default models/glide; the original used /glide/pretraind_models/) holds
# glide_gen.ckpt, glide_super_res.ckpt, srgan.ckpt and cog-pretrain.model from
# https://download.mindspore.cn/toolkits/minddiffusion/Taichu-GLIDE/. Images: OUTPUT (default
# output/glide)/samples/ and strips/. PYTHON overrides the interpreter (default: .venv/bin/python).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
CKPT_PATH="${CKPT_PATH:-$ROOT/models/glide}"
PROMPTS_FILE="${PROMPTS_FILE:-$ROOT/configs/glide/prompts.txt}"
OUTPUT="${OUTPUT:-output/glide}"
export GLOG_v="${GLOG_v:-3}"
exec "$PY" "$ROOT/scripts/glide_txt2img.py" \
  --is_chinese true \
  --denoise_steps 60 \
  --super_res_step 27 \
  --pics_generated 4 \
  --tokenizer_model cog-pretrain.model \
  --gen_ckpt glide_gen.ckpt \
  --super_ckpt glide_super_res.ckpt \
  --srgan_ckpt srgan.ckpt \
  --ckpt_path "$CKPT_PATH" \
  --prompts_file "$PROMPTS_FILE" \
  --output_path "$OUTPUT" \
  "$@"
