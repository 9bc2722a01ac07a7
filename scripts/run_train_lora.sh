#!/usr/bin/env bash
# Single-device LoRA fine-tuning of the latent-diffusion model, as Wukong-Huahua's run_train_lora.sh:
# run_train_ldm.sh with the LoRA recipe (configs/wukong/train-lora.yaml: train.enable_lora, rank 4,
# alpha 4, lr 1e-4 -> 1e-6); only the LoRA weights train, and the exports are LoRA-only files.
#
#   bash scripts/run_train_lora.sh                                   # configs/wukong/train-lora.yaml
#   DATA_PATH=dataset/ OUTPUT=output/txt2img_lora bash scripts/run_train_lora.sh
#   FOREGROUND=1 bash scripts/run_train_lora.sh configs/shapes/lora.yaml data.path=my_pairs/ --device_target CPU
#
# Extra arguments go to scripts/train_ldm.py (config overrides, --resume auto, --device_target ...).
set -euo pipefail
CONFIG=${1:-configs/wukong/train-lora.yaml}
[ $# -gt 0 ] && shift
export OUTPUT=${OUTPUT:-output/txt2img_lora}
exec bash "$(dirname "$0")/run_train_ldm.sh" "$CONFIG" "$@"
