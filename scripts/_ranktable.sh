#!/usr/bin/env bash
# Shared body of scripts/run_train_<trainer>_ranktable.sh: one process per device of this server.
#   bash scripts/_ranktable.sh TRAINER RANK_TABLE_FILE CONFIG.yaml [overrides / trainer flags ...]
# Environment: DEVICE_NUM and DEVICES (default: this server's entry of the table), SERVER_ID (this
# server's index in server_list; default: found by address), LOG_DIR (rank_<id>/log_train below it),
# CLUSTER_TIME_OUT (600 s). --device_target CPU among the flags rehearses the launch without Ascend.
set -euo pipefail
TRAINER=$1; shift
if [ $# -lt 2 ]; then
  echo "usage: $(basename "$0") RANK_TABLE_FILE CONFIG.yaml [overrides / train flags ...]  (env: DEVICE_NUM DEVICES SERVER_ID LOG_DIR)" >&2
  exit 2
fi
TABLE=$1; CONFIG=$2; shift 2
source "$(dirname "$0")/_launch_common.sh"
# the config flag of the trainer script: DreamBooth keeps the original run_db_train.py's --train_config
case "$TRAINER" in db) CONFIG_FLAG=--train_config ;; *) CONFIG_FLAG=--config ;; esac
exec "$PYTHON" "$ROOT/scripts/launch_train.py" ranktable "$TRAINER" --rank_table "$TABLE" \
  ${DEVICE_NUM:+--device_num "$DEVICE_NUM"} ${DEVICES:+--devices "$DEVICES"} ${SERVER_ID:+--server_id "$SERVER_ID"} \
  --log_dir "${LOG_DIR:-runs/ranktable_${TRAINER}_logs}" --cluster_time_out "${CLUSTER_TIME_OUT:-600}" \
  ${DRY_RUN:+--dry_run} -- "$CONFIG_FLAG" "$CONFIG" --no_progress "$@"
