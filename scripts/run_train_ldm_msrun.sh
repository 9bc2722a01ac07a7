#!/usr/bin/env bash
# Data-parallel latent-diffusion training with MindSpore's own launcher (msrun): N workers on one node.
# Works on Ascend (HCCL), GPU (NCCL) and CPU (built-in backend).
#
#   bash scripts/run_train_ldm_msrun.sh 8 configs/wukong/train-finetune.yaml data.path=dataset/
#   MASTER_PORT=8129 bash scripts/run_train_ldm_msrun.sh 2 configs/ldm/tiny-csv.yaml data.path=my_pairs/ --device_target CPU
#
# Extra arguments go to scripts/train_ldm.py (config overrides, --resume auto, --device_target ...).
# Logs: $LOG_DIR/worker_<rank>.log (default runs/msrun_ldm_logs). msrun starts workers with the first
# `python` on PATH: this script puts the interpreter that runs it (or $PYTHON) first.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 NUM_WORKERS CONFIG.yaml [overrides / train_ldm.py flags ...]" >&2
  exit 2
fi
NUM_WORKERS=$1; CONFIG=$2; shift 2
case "$NUM_WORKERS" in ''|*[!0-9]*) echo "error: NUM_WORKERS must be a positive integer, got '$NUM_WORKERS'" >&2; exit 2;; esac
[ -f "$CONFIG" ] || { echo "error: config file not found: $CONFIG" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
if [ -x "$ROOT/.venv/bin/python" ] && [ -z "${VIRTUAL_ENV:-}" ]; then PYTHON="$ROOT/.venv/bin/python"; fi
"$PYTHON" -c "import mindspore" 2>/dev/null || { echo "error: $PYTHON cannot import mindspore: set PYTHON=/path/to/venv/bin/python (pip install -r requirements.txt)" >&2; exit 2; }
export PATH="$(dirname "$PYTHON"):$PATH"
MSRUN=$(command -v msrun || true)
[ -n "$MSRUN" ] || { echo "error: msrun not found next to $PYTHON: install mindspore (pip install -r requirements.txt)" >&2; exit 2; }
MASTER_PORT=${MASTER_PORT:-8128}
LOG_DIR=${LOG_DIR:-runs/msrun_ldm_logs}
mkdir -p "$LOG_DIR"
exec "$MSRUN" --worker_num="$NUM_WORKERS" --local_worker_num="$NUM_WORKERS" --master_port="$MASTER_PORT" \
  --log_dir="$LOG_DIR" --join=True --cluster_time_out=300 \
  python "$ROOT/scripts/train_ldm.py" --config "$CONFIG" --no_progress "$@"
