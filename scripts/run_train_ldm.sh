#!/usr/bin/env bash
# Single-device latent-diffusion training, in the style of Wukong-Huahua's run_train.sh:
# same environment variables, runs in the background with nohup, log in <output>/log_train.
# Unlike the original it never deletes the output folder: rerun with --resume auto to continue.
#
#   bash scripts/run_train_ldm.sh                                   # configs/wukong/train-finetune.yaml
#   DEVICE_ID=2 OUTPUT=output/txt2img DATA_PATH=dataset/ bash scripts/run_train_ldm.sh
#   FOREGROUND=1 bash scripts/run_train_ldm.sh configs/ldm/tiny-csv.yaml data.path=my_pairs/ --device_target CPU
#
# Extra arguments go to scripts/train_ldm.py (config overrides, --resume auto, --device_target ...).
set -euo pipefail
CONFIG=${1:-configs/wukong/train-finetune.yaml}
[ $# -gt 0 ] && shift
[ -f "$CONFIG" ] || { echo "error: config file not found: $CONFIG" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
if [ -x "$ROOT/.venv/bin/python" ] && [ -z "${VIRTUAL_ENV:-}" ]; then PYTHON="$ROOT/.venv/bin/python"; fi
"$PYTHON" -c "import mindspore" 2>/dev/null || { echo "error: $PYTHON cannot import mindspore: set PYTHON=/path/to/venv/bin/python (pip install -r requirements.txt)" >&2; exit 2; }

export GLOG_v=3
export HCCL_CONNECT_TIMEOUT=600
export ASCEND_GLOBAL_LOG_LEVEL=3
export ASCEND_SLOG_PRINT_TO_STDOUT=0
export DEVICE_ID=${DEVICE_ID:-0}
export RANK_SIZE=1
OUTPUT=${OUTPUT:-output/txt2img}
DATA_PATH=${DATA_PATH:-}
export MS_COMPILER_CACHE_PATH=$OUTPUT
mkdir -p "$OUTPUT"
ARGS=(--config "$CONFIG" --no_progress "train.output_dir=$OUTPUT")
[ -n "$DATA_PATH" ] && ARGS+=("data.path=$DATA_PATH")
ARGS+=("$@")
if [ -n "${FOREGROUND:-}" ]; then
  "$PYTHON" -u "$ROOT/scripts/train_ldm.py" "${ARGS[@]}" 2>&1 | tee -a "$OUTPUT/log_train"
else
  nohup "$PYTHON" -u "$ROOT/scripts/train_ldm.py" "${ARGS[@]}" >> "$OUTPUT/log_train" 2>&1 &
  echo "training started (pid $!): tail -f $OUTPUT/log_train"
fi
