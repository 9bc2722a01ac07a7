# Shared by the one-command model builders (train_shapes_model.sh, train_glide_shapes.sh); sourced
# from the repository root. stage / train need PY, RUNS, STAGE_LOG (the log-name prefix, e.g. "shapes")
# and the array RT_X (runtime flags) when they run.

find_python() {  # PY: $PYTHON, else .venv/bin/python, else python3; exit 2 when it lacks the packages
  PY="${PYTHON:-}"
  if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY="$PWD/.venv/bin/python"; else PY=python3; fi
  fi
  "$PY" -c "import mindspore, mind_diffusion" 2>/dev/null || {
    echo "error: $PY cannot import mindspore and mind_diffusion: run 'bash scripts/setup.sh' first, or set" \
         "PYTHON=/path/to/venv/bin/python" >&2
    exit 2; }
}

model_folder_arg() {  # model_folder_arg DEFAULT ARGS...: prints the one optional argument, or DEFAULT
  local default=$1; shift
  if [ $# -gt 1 ]; then
    echo "error: one argument at most, the model folder to write (default $default)" >&2
    return 2
  fi
  echo "${1:-$default}"
}

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
