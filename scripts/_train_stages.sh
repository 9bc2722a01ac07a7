# Shared by the one-command model builders (train_shapes_model.sh, train_glide_shapes.sh); sourced.
# Needs PY, RUNS, STAGE_LOG (the log-name prefix, e.g. "shapes") and the array RT_X (runtime flags).

stage() {  # stage NAME COMMAND...: run COMMAND, its output also in $RUNS/$STAGE_LOG-NAME.log
  local name=$1; shift
  echo "== $name: $*"
  if ! "$@" 2>&1 | tee -a "$RUNS/$STAGE_LOG-$name.log"; then
    echo "error: stage '$name' failed (log: $RUNS/$STAGE_LOG-$name.log); fix the cause and run the same command" \
         "again: finished stages are kept" >&2
    exit 1
  fi
}

train() {  # train NAME SCRIPT CONFIG RUN_DIR ARGS...: fresh, resumed, or skipped when finished
  local name=$1 script=$2 cfg=$3 run=$4; shift 4
  if [ -f "$run/.finished" ]; then
    echo "== $name: finished before ($run), skipped"
    return
  fi
  # a stopped training continues from its newest readable checkpoint; one stopped before its first
  # checkpoint starts over (--overwrite removes only that run's own files)
  local resume=(--overwrite)
  if compgen -G "$run/checkpoints/step_*.ckpt" >/dev/null; then resume=(--resume auto); fi
  stage "$name" "$PY" "scripts/$script" --config "$cfg" ${resume[@]+"${resume[@]}"} ${RT_X[@]+"${RT_X[@]}"} "$@"
  touch "$run/.finished"
}
