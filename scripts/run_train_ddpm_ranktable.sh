#!/usr/bin/env bash
# Ascend cluster launch the original MindSpore releases use: an HCCL rank table, one process per
# device, DEVICE_ID / RANK_ID / RANK_SIZE exported per process, one log folder per rank.
#
#   bash scripts/run_train_ddpm_ranktable.sh /path/hccl_8p.json configs/ddpm/cifar10.yaml data.path=/data/cifar-10-python.tar.gz
#
# RANK_SIZE defaults to the number of devices in the rank table; DEVICE_START (default 0) offsets
# device ids on this node; RANK_START (default 0) is the first global rank on this node (multi-node).
# Extra arguments go to scripts/train_ddpm.py (same entry point as single-device and msrun runs).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 RANK_TABLE_FILE CONFIG.yaml [overrides / train_ddpm.py flags ...]" >&2
  exit 2
fi
RANK_TABLE_FILE=$(realpath "$1"); CONFIG=$2; shift 2
[ -f "$RANK_TABLE_FILE" ] || { echo "error: rank table not found: $RANK_TABLE_FILE" >&2; exit 2; }
[ -f "$CONFIG" ] || { echo "error: config file not found: $CONFIG" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
if [ -x "$ROOT/.venv/bin/python" ] && [ -z "${VIRTUAL_ENV:-}" ]; then PYTHON="$ROOT/.venv/bin/python"; fi
COUNT=$("$PYTHON" -c "import json,sys; t=json.load(open(sys.argv[1])); print(sum(len(s['device']) for s in t['server_list']))" "$RANK_TABLE_FILE") \
  || { echo "error: $RANK_TABLE_FILE is not an HCCL rank table (needs server_list[].device[])" >&2; exit 2; }
export RANK_TABLE_FILE
export RANK_SIZE=${RANK_SIZE:-$COUNT}
LOCAL_DEVICES=${LOCAL_DEVICES:-$RANK_SIZE}
DEVICE_START=${DEVICE_START:-0}
RANK_START=${RANK_START:-0}
LOG_ROOT=${LOG_DIR:-runs/ranktable_logs}
echo "launching $LOCAL_DEVICES rank(s) of $RANK_SIZE with $RANK_TABLE_FILE; logs in $LOG_ROOT/rank_<id>/"
pids=()
for ((i = 0; i < LOCAL_DEVICES; i++)); do
  export DEVICE_ID=$((DEVICE_START + i))
  export RANK_ID=$((RANK_START + i))
  mkdir -p "$LOG_ROOT/rank_$RANK_ID"
  nohup "$PYTHON" "$ROOT/scripts/train_ddpm.py" --config "$CONFIG" --device_target Ascend --no_progress "$@" \
    > "$LOG_ROOT/rank_$RANK_ID/train.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
[ $status -eq 0 ] && echo "all ranks finished" || echo "a rank failed (exit $status): see $LOG_ROOT/rank_*/train.log" >&2
exit $status
