#!/usr/bin/env bash
# Wukong-Huahua's distributed fine-tuning launcher, same name and arguments as the original:
#
#   bash scripts/run_train_parallel.sh [DEVICE_NUM] [VISIABLE_DEVICES(0,1,2,3,4,5,6,7)] [RANK_TABLE_FILE]
#   bash scripts/run_train_parallel.sh 8 0,1,2,3,4,5,6,7 /path/hccl_8p.json
#   SERVER_ID=1 bash scripts/run_train_parallel.sh 8 0,1,2,3,4,5,6,7 /path/hccl_16p.json   # 2nd server
#
# RANK_ID = DEVICE_NUM x SERVER_ID + i for the i-th device, as the original; everything is checked
# against the rank table before a process starts. Variables as the original's: OUTPUT (output/txt2img;
# rank_<id>/log_train per rank, compile cache), DATA_PATH (dataset/), TRAIN_CONFIG
# (configs/wukong/train-finetune.yaml). Unlike the original it never deletes OUTPUT (resume with
# --resume auto); extra arguments go to scripts/train_ldm.py. Runs in the background (log:
# OUTPUT/launch.log) unless FOREGROUND=1.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "Usage: bash scripts/run_train_parallel.sh [DEVICE_NUM] [VISIABLE_DEVICES(0,1,2,3,4,5,6,7)] [RANK_TABLE_FILE] [train_ldm.py args ...]" >&2
  exit 2
fi
DEVICE_NUM=$1; DEVICES=$2; TABLE=$3; shift 3
source "$(dirname "$0")/_launch_common.sh"
OUTPUT=${OUTPUT:-output/txt2img}
TRAIN_CONFIG=${TRAIN_CONFIG:-configs/wukong/train-finetune.yaml}
mkdir -p "$OUTPUT"
export MS_COMPILER_CACHE_PATH=$OUTPUT
CMD=("$PYTHON" "$ROOT/scripts/launch_train.py" ranktable ldm --rank_table "$TABLE" --device_num "$DEVICE_NUM"
     --devices "$DEVICES" ${SERVER_ID:+--server_id "$SERVER_ID"} --log_dir "$OUTPUT" ${DRY_RUN:+--dry_run}
     -- --config "$TRAIN_CONFIG" --no_progress "train.output_dir=$OUTPUT" "data.path=${DATA_PATH:-dataset/}" "$@")
if [ -n "${FOREGROUND:-}${DRY_RUN:-}" ]; then
  exec "${CMD[@]}"
fi
nohup "${CMD[@]}" > "$OUTPUT/launch.log" 2>&1 &
echo "training started (launcher pid $!): tail -f $OUTPUT/launch.log $OUTPUT/rank_*/log_train"
