#!/usr/bin/env bash
# Shared body of scripts/run_train_<trainer>_msrun.sh: msrun on one node or several.
#   bash scripts/_msrun.sh TRAINER NUM_WORKERS CONFIG.yaml [overrides / trainer flags ...]
# Environment: LOCAL_WORKERS (workers on this node, default NUM_WORKERS), MASTER_ADDR (node 0,
# default 127.0.0.1), MASTER_PORT (8118), NODE_RANK (0), LOG_DIR, CLUSTER_TIME_OUT (300 s).
set -euo pipefail
TRAINER=$1; shift
if [ $# -lt 2 ]; then
  echo "usage: $(basename "$0") NUM_WORKERS CONFIG.yaml [overrides / train flags ...]  (env: LOCAL_WORKERS MASTER_ADDR MASTER_PORT NODE_RANK LOG_DIR CLUSTER_TIME_OUT)" >&2
  exit 2
fi
NUM_WORKERS=$1; CONFIG=$2; shift 2
source "$(dirname "$0")/_launch_common.sh"
# the config flag of the trainer script: DreamBooth keeps the original run_db_train.py's --train_config
case "$TRAINER" in db) CONFIG_FLAG=--train_config ;; *) CONFIG_FLAG=--config ;; esac
exec "$PYTHON" "$ROOT/scripts/launch_train.py" msrun "$TRAINER" --worker_num "$NUM_WORKERS" \
  --local_worker_num "${LOCAL_WORKERS:-$NUM_WORKERS}" --master_addr "${MASTER_ADDR:-127.0.0.1}" \
  --master_port "${MASTER_PORT:-8118}" --node_rank "${NODE_RANK:-0}" --log_dir "${LOG_DIR:-runs/msrun_${TRAINER}_logs}" \
  --cluster_time_out "${CLUSTER_TIME_OUT:-300}" ${DRY_RUN:+--dry_run} -- "$CONFIG_FLAG" "$CONFIG" --no_progress "$@"
