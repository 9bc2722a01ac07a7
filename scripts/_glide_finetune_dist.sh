#!/usr/bin/env bash
# Shared body of Taichu-GLIDE's fine-tuning launchers (scripts/run_gen_finetune_dist.sh,
# run_super_res_finetune_dist.sh), the original's arguments and checks:
#   bash scripts/_glide_finetune_dist.sh gen|super_res DEVICE_NUM VISIABLE_DEVICES RANK_TABLE_FILE [train_glide.py args ...]
# Variables (the original's fixed paths, overridable): DATA_PATH (/glide/dataset/: the folder of
# image_caption_path_file.txt), PRETRAINED_MODEL_PATH (/glide/pretraind_models/: glide_gen.ckpt or
# glide_super_res.ckpt and cog-pretrain.model), PRETRAINED_MODEL, COG_MODEL, OUTPUT (output/glide-gen
# or output/glide-super_res: the run and rank_<id>/log_train), TRAIN_CONFIG, SERVER_ID, DRY_RUN=1,
# FOREGROUND=1. Unlike the original it never deletes OUTPUT: a second launch refuses the folder
# unless --resume auto (continue) or --overwrite is among the extra arguments.
set -euo pipefail
STAGE=$1; shift
NAME="run_${STAGE}_finetune_dist.sh"
if [ $# -lt 3 ]; then
  echo "Usage: bash scripts/$NAME [DEVICE_NUM] [VISIABLE_DEVICES(0,1,2,3,4,5,6,7)] [RANK_TABLE_FILE] [train_glide.py args ...]" >&2
  exit 2
fi
DEVICE_NUM=$1; DEVICES=$2; TABLE=$3; shift 3
if ! [[ "$DEVICE_NUM" =~ ^[0-9]+$ ]] || [ "$DEVICE_NUM" -lt 1 ] || [ "$DEVICE_NUM" -gt 8 ]; then
  echo "error: DEVICE_NUM=$DEVICE_NUM is not in [1,8]: give the number of devices of this server" >&2
  exit 2
fi
IFS="," read -r -a CANDIDATE_DEVICE <<< "$DEVICES"
if [ "${#CANDIDATE_DEVICE[@]}" -ne "$DEVICE_NUM" ]; then
  echo "error: DEVICE_NUM=$DEVICE_NUM is not matched with VISIABLE_DEVICES=$DEVICES (${#CANDIDATE_DEVICE[@]} device(s))" >&2
  exit 2
fi
if [ ! -f "$TABLE" ]; then
  echo "error: RANK_TABLE_FILE=$TABLE is not a file: generate one with hccl_tools.py" >&2
  exit 2
fi
source "$(dirname "$0")/_launch_common.sh"
if [ "$STAGE" = gen ]; then
  CKPT=glide_gen.ckpt; CONFIG=configs/glide/train-gen.yaml
else
  CKPT=glide_super_res.ckpt; CONFIG=configs/glide/train-super-res.yaml
fi
TRAIN_CONFIG=${TRAIN_CONFIG:-$ROOT/$CONFIG}
OUTPUT=${OUTPUT:-output/glide-$STAGE}
DATA_PATH=${DATA_PATH:-/glide/dataset/}
PRETRAINED_MODEL_PATH=${PRETRAINED_MODEL_PATH:-/glide/pretraind_models/}
PRETRAINED_MODEL=${PRETRAINED_MODEL:-$CKPT}
COG_MODEL=${COG_MODEL:-cog-pretrain.model}
PRETRAINED_MODEL_PATH=${PRETRAINED_MODEL_PATH%/}
for f in "$PRETRAINED_MODEL_PATH/$PRETRAINED_MODEL" "$PRETRAINED_MODEL_PATH/$COG_MODEL"; do
  if [ ! -f "$f" ]; then
    echo "error: $f not found: put the released $(basename "$f") there (https://download.mindspore.cn/toolkits/minddiffusion/Taichu-GLIDE/) or set PRETRAINED_MODEL_PATH=DIR" >&2
    exit 2
  fi
done
if [ ! -d "$DATA_PATH" ]; then
  echo "error: DATA_PATH=$DATA_PATH is not a folder: set DATA_PATH to the folder of image_caption_path_file.txt" >&2
  exit 2
fi
CMD=("$PYTHON" "$ROOT/scripts/launch_train.py" ranktable glide --rank_table "$TABLE" --device_num "$DEVICE_NUM"
     --devices "$DEVICES" ${SERVER_ID:+--server_id "$SERVER_ID"} --log_dir "$OUTPUT" ${DRY_RUN:+--dry_run}
     -- --config "$TRAIN_CONFIG" --no_progress "train.output_dir=$OUTPUT" "data.path=$DATA_PATH"
     "init.checkpoint=$PRETRAINED_MODEL_PATH/$PRETRAINED_MODEL" "tokenizer.sp_model=$PRETRAINED_MODEL_PATH/$COG_MODEL" "$@")
if [ -n "${FOREGROUND:-}${DRY_RUN:-}" ]; then
  exec "${CMD[@]}"
fi
mkdir -p "$OUTPUT"
export MS_COMPILER_CACHE_PATH=$OUTPUT
nohup "${CMD[@]}" > "$OUTPUT/launch.log" 2>&1 &
echo "training started (launcher pid $!): tail -f $OUTPUT/launch.log $OUTPUT/rank_*/log_train"
