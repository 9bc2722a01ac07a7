#!/usr/bin/env bash
# DreamBooth, as Wukong-Huahua's scripts/run_db_train.sh: same variables and flags, runs in the
# background with nohup, log in <output_path>/<task_name>/log_train. Unlike the original it never
# deletes the output folder: rerun with --resume auto to continue (or --overwrite to start over).
#
#   bash scripts/run_db_train.sh                      # dataset/train_cat, dataset/reg_cat, 猫, α, models/
#   TRAIN_DATA_PATH=data/cross_instances REG_DATA_PATH=data/cross_class TOKEN=sks CLASS_WORD= \
#     PRETRAINED_MODEL_PATH=models/shapes_zh TRAIN_CONFIG=configs/shapes/dreambooth.yaml TASK_NAME=db-cross \
#     FOREGROUND=1 bash scripts/run_db_train.sh --device_target CPU
#
# Extra arguments go to scripts/run_db_train.py (--enable_lora True, overrides, --resume auto, ...).
# With WORKERS=N (N > 1) the run is data parallel over N msrun workers on this node (several nodes or
# rank tables: scripts/run_train_db_msrun.sh, run_train_db_ranktable.sh).
set -euo pipefail

export GLOG_v=3
export HCCL_CONNECT_TIMEOUT=600
export ASCEND_GLOBAL_LOG_LEVEL=3
export ASCEND_SLOG_PRINT_TO_STDOUT=0
export DEVICE_ID=${DEVICE_ID:-3}
OUTPUT_PATH=${OUTPUT_PATH:-output}
TASK_NAME=${TASK_NAME:-α猫}
TRAIN_DATA_PATH=${TRAIN_DATA_PATH:-dataset/train_cat}
REG_DATA_PATH=${REG_DATA_PATH-dataset/reg_cat}
CLASS_WORD=${CLASS_WORD-猫}
PRETRAINED_MODEL_PATH=${PRETRAINED_MODEL_PATH:-models}
TRAIN_CONFIG=${TRAIN_CONFIG:-configs/wukong/train-db.yaml}
TOKEN=${TOKEN:-α}
WORKERS=${WORKERS:-1}
[ -f "$TRAIN_CONFIG" ] || { echo "error: train config not found: $TRAIN_CONFIG" >&2; exit 2; }
[ -d "$TRAIN_DATA_PATH" ] || { echo "error: instance image folder not found: $TRAIN_DATA_PATH (TRAIN_DATA_PATH)" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
if [ -x "$ROOT/.venv/bin/python" ] && [ -z "${VIRTUAL_ENV:-}" ]; then PYTHON="$ROOT/.venv/bin/python"; fi
"$PYTHON" -c "import mindspore" 2>/dev/null || { echo "error: $PYTHON cannot import mindspore: set PYTHON=/path/to/venv/bin/python (pip install -r requirements.txt)" >&2; exit 2; }
OUT="$OUTPUT_PATH/$TASK_NAME"
mkdir -p "$OUT"
export RANK_SIZE=$WORKERS MS_COMPILER_CACHE_PATH=$OUT
ARGS=(--train_data_path="$TRAIN_DATA_PATH" --class_word="$CLASS_WORD" --token="$TOKEN"
      --train_config="$TRAIN_CONFIG" --output_path="$OUT" --pretrained_model_path="$PRETRAINED_MODEL_PATH" --no_progress)
[ -n "$REG_DATA_PATH" ] && ARGS+=(--reg_data_path="$REG_DATA_PATH")
ARGS+=("$@")
if [ "$WORKERS" -gt 1 ]; then  # msrun through the cluster launcher (checks first; scripts/run_train_db_msrun.sh)
  CMD=("$PYTHON" -u "$ROOT/scripts/launch_train.py" msrun db --worker_num="$WORKERS" --master_port="${MASTER_PORT:-8130}"
       --log_dir="$OUT/msrun_logs" --cluster_time_out=300 -- "${ARGS[@]}")
else
  CMD=("$PYTHON" -u "$ROOT/scripts/run_db_train.py" "${ARGS[@]}")
fi
if [ -n "${FOREGROUND:-}" ]; then
  "${CMD[@]}" 2>&1 | tee -a "$OUT/log_train"
else
  nohup "${CMD[@]}" >> "$OUT/log_train" 2>&1 &
  echo "DreamBooth training started (pid $!): tail -f $OUT/log_train"
fi
