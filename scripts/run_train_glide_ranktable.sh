#!/usr/bin/env bash
# GLIDE training on Ascend with an HCCL rank table: one process per device of this server,
# DEVICE_ID / RANK_ID / RANK_SIZE / RANK_TABLE_FILE exported per process, a log folder per rank.
#
#   bash scripts/run_train_glide_ranktable.sh /path/hccl_8p.json configs/glide/train-gen.yaml data.path=/glide/dataset/
#   DRY_RUN=1 bash scripts/run_train_glide_ranktable.sh hccl_2p.json my-tiny-glide.yaml --device_target CPU   # print only
#
# The original's launchers under their own names: scripts/run_gen_finetune_dist.sh and
# run_super_res_finetune_dist.sh. Extra arguments go to scripts/train_glide.py; variables: scripts/_ranktable.sh.
exec bash "$(dirname "$0")/_ranktable.sh" glide "$@"
