#!/usr/bin/env bash
# Taichu-GLIDE's generation-stage fine-tuning launcher (the report's first stage: the 64 px base
# model from glide_gen.ckpt, configs/glide/train-gen.yaml), same name and arguments as the original:
#
#   bash scripts/run_gen_finetune_dist.sh [DEVICE_NUM] [VISIABLE_DEVICES(0,1,2,3,4,5,6,7)] [RANK_TABLE_FILE]
#   bash scripts/run_gen_finetune_dist.sh 8 0,1,2,3,4,5,6,7 /path/hccl_8p.json
#   DATA_PATH=data/ PRETRAINED_MODEL_PATH=models/glide/ bash scripts/run_gen_finetune_dist.sh 8 0,1,2,3,4,5,6,7 hccl_8p.json train.batch_size=2
#
# RANK_ID = DEVICE_NUM x SERVER_ID + i for the i-th device, as the original. Variables and the
# differences from the original (never deletes OUTPUT; --resume auto continues): scripts/_glide_finetune_dist.sh.
exec bash "$(dirname "$0")/_glide_finetune_dist.sh" gen "$@"
