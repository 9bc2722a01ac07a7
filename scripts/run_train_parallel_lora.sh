#!/usr/bin/env bash
# Data-parallel LoRA fine-tuning with msrun, as Wukong-Huahua's run_train_parallel_lora.sh:
# run_train_ldm_msrun.sh with the LoRA recipe (configs/wukong/train-lora.yaml unless a config is given).
#
#   bash scripts/run_train_parallel_lora.sh 8                                  # 8 workers, configs/wukong/train-lora.yaml
#   MASTER_PORT=8129 bash scripts/run_train_parallel_lora.sh 2 configs/shapes/lora.yaml data.path=my_pairs/ --device_target CPU
#
# Extra arguments go to scripts/train_ldm.py. Logs: $LOG_DIR/worker_<rank>.log (default runs/msrun_lora_logs).
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 NUM_WORKERS [CONFIG.yaml] [overrides / train_ldm.py flags ...]" >&2
  exit 2
fi
NUM_WORKERS=$1; shift
CONFIG=configs/wukong/train-lora.yaml
if [ $# -gt 0 ] && [[ "$1" == *.yaml ]]; then CONFIG=$1; shift; fi
export LOG_DIR=${LOG_DIR:-runs/msrun_lora_logs}
exec bash "$(dirname "$0")/run_train_ldm_msrun.sh" "$NUM_WORKERS" "$CONFIG" "$@"
