#!/usr/bin/env bash
# Latent-diffusion (Wukong-Huahua) training on Ascend with an HCCL rank table: one process per device of this server,
# DEVICE_ID / RANK_ID / RANK_SIZE / RANK_TABLE_FILE exported per process, a log folder per rank.
#
#   bash scripts/run_train_ldm_ranktable.sh /path/hccl_8p.json configs/wukong/train-finetune.yaml data.path=dataset/
#   SERVER_ID=1 bash scripts/run_train_ldm_ranktable.sh /path/hccl_16p_2s.json configs/wukong/train-finetune.yaml data.path=dataset/   # second server
#   DRY_RUN=1 bash scripts/run_train_ldm_ranktable.sh hccl_2p.json configs/ldm/tiny-csv.yaml data.path=my_pairs/ --device_target CPU      # print, start nothing
#
# Extra arguments go to scripts/train_ldm.py. Variables (DEVICE_NUM, DEVICES, SERVER_ID, LOG_DIR):
# scripts/_ranktable.sh. --device_target CPU rehearses the launch on a machine without Ascend.
exec bash "$(dirname "$0")/_ranktable.sh" ldm "$@"
