#!/usr/bin/env bash
# Class-conditional DDPM training on Ascend with an HCCL rank table: one process per device of this server,
# DEVICE_ID / RANK_ID / RANK_SIZE / RANK_TABLE_FILE exported per process, a log folder per rank.
#
#   bash scripts/run_train_ddpm_ranktable.sh /path/hccl_8p.json configs/ddpm/cifar10.yaml data.path=/data/cifar-10-python.tar.gz
#   SERVER_ID=1 bash scripts/run_train_ddpm_ranktable.sh /path/hccl_16p_2s.json configs/ddpm/cifar10.yaml data.path=/data/cifar-10-python.tar.gz   # second server
#   DRY_RUN=1 bash scripts/run_train_ddpm_ranktable.sh hccl_2p.json configs/ddpm/digits16.yaml --device_target CPU      # print, start nothing
#
# Extra arguments go to scripts/train_ddpm.py. Variables (DEVICE_NUM, DEVICES, SERVER_ID, LOG_DIR):
# scripts/_ranktable.sh. --device_target CPU rehearses the launch on a machine without Ascend.
exec bash "$(dirname "$0")/_ranktable.sh" ddpm "$@"
