#!/usr/bin/env bash
# Data-parallel class-conditional DDPM training with msrun, on one node or several (Ascend, GPU or CPU).
#
#   bash scripts/run_train_ddpm_msrun.sh 8 configs/ddpm/cifar10.yaml data.path=/data/cifar-10-python.tar.gz
#   MASTER_PORT=8129 bash scripts/run_train_ddpm_msrun.sh 2 configs/ddpm/digits16.yaml --device_target CPU
#   two nodes x 8 (run on each; node 0's address as MASTER_ADDR):
#   LOCAL_WORKERS=8 MASTER_ADDR=10.0.0.1 NODE_RANK=0 bash scripts/run_train_ddpm_msrun.sh 16 configs/ddpm/cifar10.yaml data.path=/data/cifar-10-python.tar.gz
#   LOCAL_WORKERS=8 MASTER_ADDR=10.0.0.1 NODE_RANK=1 bash scripts/run_train_ddpm_msrun.sh 16 configs/ddpm/cifar10.yaml data.path=/data/cifar-10-python.tar.gz
#
# Extra arguments go to scripts/train_ddpm.py. Checks, logs (LOG_DIR/worker_<rank>.log) and the other
# variables (MASTER_PORT, CLUSTER_TIME_OUT, DRY_RUN=1): scripts/_msrun.sh and scripts/launch_train.py.
exec bash "$(dirname "$0")/_msrun.sh" ddpm "$@"
