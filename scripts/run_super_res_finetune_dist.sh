#!/usr/bin/env bash
# Taichu-GLIDE's super-resolution fine-tuning launcher (the report's second stage: the 64 -> 256
# model from glide_super_res.ckpt, configs/glide/train-super-res.yaml), same name and arguments as the original:
#
#   bash scripts/run_super_res_finetune_dist.sh [DEVICE_NUM] [VISIABLE_DEVICES(0,1,2,3,4,5,6,7)] [RANK_TABLE_FILE]
#   bash scripts/run_super_res_finetune_dist.sh 8 0,1,2,3,4,5,6,7 /path/hccl_8p.json
#
# Variables and the differences from the original: scripts/_glide_finetune_dist.sh.
exec bash "$(dirname "$0")/_glide_finetune_dist.sh" super_res "$@"
