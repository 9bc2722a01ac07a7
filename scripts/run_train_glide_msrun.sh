#!/usr/bin/env bash
# Data-parallel GLIDE training (base 64 px or 64 -> 256 super-resolution) with msrun, on one node or several.
#
#   bash scripts/run_train_glide_msrun.sh 8 configs/glide/train-gen.yaml data.path=/glide/dataset/
#   MASTER_PORT=8129 bash scripts/run_train_glide_msrun.sh 2 my-tiny-glide.yaml --device_target CPU
#   LOCAL_WORKERS=8 MASTER_ADDR=10.0.0.1 NODE_RANK=1 bash scripts/run_train_glide_msrun.sh 16 configs/glide/train-super-res.yaml data.path=/glide/dataset/
#
# train.batch_size is each worker's batch (as the original's --batch_size). Extra arguments go to
# scripts/train_glide.py. Checks, logs and variables: scripts/_msrun.sh and scripts/launch_train.py.
exec bash "$(dirname "$0")/_msrun.sh" glide "$@"
