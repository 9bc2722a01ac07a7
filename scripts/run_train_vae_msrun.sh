#!/usr/bin/env bash
# Data-parallel KL autoencoder (first stage) training with msrun, on one node or several (Ascend, GPU or CPU).
#
#   bash scripts/run_train_vae_msrun.sh 8 configs/ldm/tiny-vae.yaml data.path=my_pairs/
#   MASTER_PORT=8129 bash scripts/run_train_vae_msrun.sh 2 configs/ldm/tiny-vae.yaml data.path=my_pairs/ --device_target CPU
#   two nodes x 8 (run on each; node 0's address as MASTER_ADDR):
#   LOCAL_WORKERS=8 MASTER_ADDR=10.0.0.1 NODE_RANK=0 bash scripts/run_train_vae_msrun.sh 16 configs/ldm/tiny-vae.yaml data.path=my_pairs/
#   LOCAL_WORKERS=8 MASTER_ADDR=10.0.0.1 NODE_RANK=1 bash scripts/run_train_vae_msrun.sh 16 configs/ldm/tiny-vae.yaml data.path=my_pairs/
#
# Extra arguments go to scripts/train_vae.py. Checks, logs (LOG_DIR/worker_<rank>.log) and the other
# variables (MASTER_PORT, CLUSTER_TIME_OUT, DRY_RUN=1): scripts/_msrun.sh and scripts/launch_train.py.
exec bash "$(dirname "$0")/_msrun.sh" vae "$@"
