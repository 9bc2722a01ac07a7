#!/usr/bin/env bash
# Data-parallel DreamBooth (Wukong-Huahua's run_db_train.py flags) with msrun, on one node or several.
#
#   bash scripts/run_train_db_msrun.sh 8 configs/wukong/train-db.yaml --train_data_path=dataset/train_cat \
#     --reg_data_path=dataset/reg_cat --class_word=猫 --token=α --output_path=output/α猫 --pretrained_model_path=models
#   MASTER_PORT=8129 bash scripts/run_train_db_msrun.sh 2 configs/shapes/dreambooth.yaml --pretrained_model_path models/shapes_zh \
#     --train_data_path data/cross/instances --reg_data_path data/cross/class --class_prompts_file data/cross/class_prompts.txt \
#     --token sks --output_path runs/db-cross --device_target CPU
#   LOCAL_WORKERS=8 MASTER_ADDR=10.0.0.1 NODE_RANK=1 bash scripts/run_train_db_msrun.sh 16 configs/wukong/train-db.yaml ...
#
# The second argument is --train_config (this repo's YAML or the original's train_db_config.json).
# train.batch_size (--train_batch_size) is each worker's instance rows, as many class rows; rank 0
# generates the missing class images, the others wait for them. Extra arguments go to
# scripts/run_db_train.py. Checks, logs and variables: scripts/_msrun.sh and scripts/launch_train.py.
exec bash "$(dirname "$0")/_msrun.sh" db "$@"
