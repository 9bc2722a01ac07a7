#!/usr/bin/env bash
# The built-in shapes model from nothing, in one command (about 4 hours on a 2-core CPU):
#
#   bash scripts/train_shapes_model.sh                      # -> output/shapes_zh
#   bash scripts/train_shapes_model.sh models/shapes_zh     # replace the model infer.sh uses
#
# Stages, each with its log in $RUNS/shapes-<stage>.log:
#   export  the world: N_IMAGES captioned 64x64 images + its vocabulary     -> $DATA
#   vae     the autoencoder, f=4 (configs/shapes/vae.yaml)                  -> $RUNS/shapes-vae
#   scale   1 / latent std into $RUNS/shapes-ldm.yaml, a copy of configs/shapes/ldm.yaml
#   ldm     latent UNet + text encoder ($RUNS/shapes-ldm.yaml)              -> $RUNS/shapes-ldm
#   refine  REFINE_STEPS more steps of the UNet alone from the ldm stage's $CKPT, the text
#           encoder frozen, learning rate 1e-4 -> 1e-6 (100 warm-up steps)    -> $RUNS/shapes-ldm-refine
#   eval    prompt adherence, held-out and seen prompts                     -> <final run>/eval
#   package the model folder (model card with the adherence table, samples, logs and curves)
#
# Run the same command again after an interruption: finished stages are skipped and a stopped
# training resumes from its newest checkpoint. To start over, delete $RUNS/shapes-* (and $DATA).
# Environment: PYTHON (default .venv/bin/python, else python3), DATA (data/shapes_train), RUNS (runs),
# N_IMAGES (20000), CKPT (the LDM checkpoint evaluated and shipped: model.ckpt, or model_ema.ckpt),
# VAE_ARGS / LDM_ARGS / REFINE_ARGS (config overrides, e.g. LDM_ARGS="train.steps=3000"),
# REFINE_STEPS (2500; 0 skips the refine stage and ships the ldm stage's weights),
# EVAL_ARGS / PACKAGE_ARGS (extra flags of scripts/eval_shapes_model.py / package_shapes_model.py),
# RUNTIME_ARGS (runtime flags of the training, scale and evaluation stages, e.g. "--device_target Ascend"
# or "--mode pynative").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/_train_stages.sh
source "$ROOT/scripts/_train_stages.sh"
find_python
OUT="$(model_folder_arg output/shapes_zh "$@")" || exit 2
DATA="${DATA:-data/shapes_train}"
RUNS="${RUNS:-runs}"
N_IMAGES="${N_IMAGES:-20000}"
# The final weights, not the EMA: at the end of the cosine decay they are already averaged, while the
# EMA (decay 0.999) still carries the text encoder of ~1000 steps earlier (held-out position 81% vs 95%)
CKPT="${CKPT:-model.ckpt}"
VAE_RUN="$RUNS/shapes-vae"
LDM_RUN="$RUNS/shapes-ldm"
LDM_CFG="$RUNS/shapes-ldm.yaml"
REFINE_RUN="$RUNS/shapes-ldm-refine"
REFINE_STEPS="${REFINE_STEPS:-2500}"
case "$REFINE_STEPS" in
  ''|*[!0-9]*) echo "error: REFINE_STEPS must be a whole number of steps (0 skips the refine stage), got '$REFINE_STEPS'" >&2
               exit 2 ;;
esac
read -r -a VAE_X <<< "${VAE_ARGS:-}"
read -r -a LDM_X <<< "${LDM_ARGS:-}"
read -r -a REFINE_X <<< "${REFINE_ARGS:-}"
read -r -a EVAL_X <<< "${EVAL_ARGS:-}"
read -r -a PKG_X <<< "${PACKAGE_ARGS:-}"
read -r -a RT_X <<< "${RUNTIME_ARGS:-}"
export GLOG_v="${GLOG_v:-3}"
mkdir -p "$RUNS"

STAGE_LOG=shapes

if [ -f "$DATA/data.csv" ] && [ -f "$DATA/vocab.txt" ]; then
  echo "== export: $DATA holds an export, kept"
else
  stage export "$PY" scripts/export_shapes_csv.py --out "$DATA" --n "$N_IMAGES" --vocab "$DATA/vocab.txt" --overwrite
fi

train vae train_vae.py configs/shapes/vae.yaml "$VAE_RUN" --no_progress "train.output_dir=$VAE_RUN" "data.path=$DATA" ${VAE_X[@]+"${VAE_X[@]}"}

if [ -f "$LDM_CFG" ]; then
  echo "== scale: $LDM_CFG exists, kept (its scale_factor belongs to the LDM run)"
else
  cp configs/shapes/ldm.yaml "$LDM_CFG.tmp"
  stage scale "$PY" scripts/vae_latent_scale.py --config configs/shapes/vae.yaml --vae "$VAE_RUN/vae.ckpt" \
    --write "$LDM_CFG.tmp" ${RT_X[@]+"${RT_X[@]}"} "data.path=$DATA" ${VAE_X[@]+"${VAE_X[@]}"}
  mv "$LDM_CFG.tmp" "$LDM_CFG"
fi

train ldm train_ldm.py "$LDM_CFG" "$LDM_RUN" --no_progress "train.output_dir=$LDM_RUN" "data.path=$DATA" "init.vae_checkpoint=$VAE_RUN/vae.ckpt" \
  "init.vocab=$DATA/vocab.txt" ${LDM_X[@]+"${LDM_X[@]}"}

# The refine stage continues the ldm stage's final weights; a refine run begun from other weights (the ldm
# stage was resumed or retrained since) starts over.
FINAL_RUN="$LDM_RUN"
PKG_BASE=()
if [ "$REFINE_STEPS" -gt 0 ]; then
  base_sum="$(sha256sum "$LDM_RUN/$CKPT" | cut -d' ' -f1)"
  if [ -d "$REFINE_RUN" ] && [ "$(cat "$REFINE_RUN/base.sha256" 2>/dev/null)" != "$base_sum" ]; then
    echo "== refine: $REFINE_RUN began from another $LDM_RUN/$CKPT; it starts over"
    rm -rf "$REFINE_RUN/checkpoints" "$REFINE_RUN/.finished"
  fi
  mkdir -p "$REFINE_RUN"
  echo "$base_sum" > "$REFINE_RUN/base.sha256"
  train refine train_ldm.py "$LDM_CFG" "$REFINE_RUN" --no_progress "train.output_dir=$REFINE_RUN" "data.path=$DATA" \
    "init.checkpoint=$LDM_RUN/$CKPT" init.vae_checkpoint=null "init.vocab=$DATA/vocab.txt" \
    "train.steps=$REFINE_STEPS" train.start_learning_rate=1e-4 train.end_learning_rate=1e-6 train.warmup_steps=100 \
    train.train_text_encoder=false train.text_encoder_start_step=0 train.ema_start=0 ${REFINE_X[@]+"${REFINE_X[@]}"}
  FINAL_RUN="$REFINE_RUN"
  PKG_BASE=(--base_run "$LDM_RUN")
fi

# kept only when it evaluated this very checkpoint: the same content check package_shapes_model.py --eval makes
if "$PY" -c "import sys; from mind_diffusion.shapes.packaging import check_eval_of; \
from pathlib import Path; check_eval_of(Path(sys.argv[1]), Path(sys.argv[2]))" \
    "$FINAL_RUN/eval" "$FINAL_RUN/$CKPT" 2>/dev/null; then
  echo "== eval: $FINAL_RUN/eval/adherence.md evaluated this $CKPT, kept"
else
  rm -rf "$FINAL_RUN/eval.tmp"
  stage eval "$PY" scripts/eval_shapes_model.py --model "$FINAL_RUN" --ckpt "$CKPT" --out "$FINAL_RUN/eval.tmp" \
    ${RT_X[@]+"${RT_X[@]}"} ${EVAL_X[@]+"${EVAL_X[@]}"}
  rm -rf "$FINAL_RUN/eval"  # an evaluation of an earlier state of the run
  mv "$FINAL_RUN/eval.tmp" "$FINAL_RUN/eval"
fi

stage package "$PY" scripts/package_shapes_model.py "$FINAL_RUN" "$OUT" --vae_run "$VAE_RUN" --ckpt "$CKPT" --eval "$FINAL_RUN/eval" \
  ${PKG_BASE[@]+"${PKG_BASE[@]}"} ${PKG_X[@]+"${PKG_X[@]}"}
echo "done: $OUT (model card $OUT/README.md). bash infer.sh uses models/shapes_zh when the official checkpoint is absent."
