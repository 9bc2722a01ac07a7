#!/usr/bin/env bash
# DreamBooth (Wukong-Huahua's run_db_train.py flags) on Ascend with an HCCL rank table: one process per device of
# this server, DEVICE_ID / RANK_ID / RANK_SIZE / RANK_TABLE_FILE exported per process, a log folder per rank.
#
#   bash scripts/run_train_db_ranktable.sh /path/hccl_8p.json configs/wukong/train-db.yaml --train_data_path=dataset/train_cat \
#     --reg_data_path=dataset/reg_cat --class_word=猫 --token=α --output_path=output/α猫 --pretrained_model_path=models
#   SERVER_ID=1 bash scripts/run_train_db_ranktable.sh /path/hccl_16p_2s.json configs/wukong/train-db.yaml ...   # second server
#   DRY_RUN=1 bash scripts/run_train_db_ranktable.sh hccl_2p.json configs/shapes/dreambooth.yaml ... --device_target CPU
#
# The second argument is --train_config (this repo's YAML or the original's train_db_config.json); extra
# arguments go to scripts/run_db_train.py. Variables (DEVICE_NUM, DEVICES, SERVER_ID, LOG_DIR):
# scripts/_ranktable.sh. --device_target CPU rehearses the launch on a machine without Ascend.
exec bash "$(dirname "$0")/_ranktable.sh" db "$@"
