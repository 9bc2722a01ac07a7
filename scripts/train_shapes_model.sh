#!/usr/bin/env bash
# The built-in shapes model from nothing, in one command (about 3.5 hours on a 2-core CPU):
#
#   bash scripts/train_shapes_model.sh                      # -> output/shapes_zh
#   bash scripts/train_shapes_model.sh models/shapes_zh     # replace the model infer.sh uses
#
# Stages, each with its log in $RUNS/shapes-<stage>.log:
#   export  the world: N_IMAGES captioned 64x64 images + its vocabulary     -> $DATA
#   vae     the autoencoder, f=4 (configs/shapes/vae.yaml)                  -> $RUNS/shapes-vae
#   scale   1 / latent std into $RUNS/shapes-ldm.yaml, a copy of configs/shapes/ldm.yaml
#   ldm     latent UNet + text encoder ($RUNS/shapes-ldm.yaml)              -> $RUNS/shapes-ldm
#   eval    prompt adherence, held-out and seen prompts                     -> $RUNS/shapes-ldm/eval
#   package the model folder (model card with the adherence table, samples, logs and curves)
#
# Run the same command again after an interruption: finished stages are skipped and a stopped
# training resumes from its newest checkpoint. To start over, delete $RUNS/shapes-* (and $DATA).
# Environment: PYTHON (default .venv/bin/python, else python3), DATA (data/shapes_train), RUNS (runs),
# N_IMAGES (20000), CKPT (the LDM checkpoint evaluated and shipped: model.ckpt, or model_ema.ckpt),
# VAE_ARGS / LDM_ARGS (config overrides, e.g. LDM_ARGS="train.steps=3000"),
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
read -r -a VAE_X <<< "${VAE_ARGS:-}"
read -r -a LDM_X <<< "${LDM_ARGS:-}"
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

# kept only when it evaluated this very checkpoint: the same content check package_shapes_model.py --eval makes
if "$PY" -c "import sys; from mind_diffusion.shapes.packaging import check_eval_of; \
from pathlib import Path; check_eval_of(Path(sys.argv[1]), Path(sys.argv[2]))" \
    "$LDM_RUN/eval" "$LDM_RUN/$CKPT" 2>/dev/null; then
  echo "== eval: $LDM_RUN/eval/adherence.md evaluated this $CKPT, kept"
else
  rm -rf "$LDM_RUN/eval.tmp"
  stage eval "$PY" scripts/eval_shapes_model.py --model "$LDM_RUN" --ckpt "$CKPT" --out "$LDM_RUN/eval.tmp" \
    ${RT_X[@]+"${RT_X[@]}"} ${EVAL_X[@]+"${EVAL_X[@]}"}
  rm -rf "$LDM_RUN/eval"  # an evaluation of an earlier state of the run
  mv "$LDM_RUN/eval.tmp" "$LDM_RUN/eval"
fi

stage package "$PY" scripts/package_shapes_model.py "$LDM_RUN" "$OUT" --vae_run "$VAE_RUN" --ckpt "$CKPT" --eval "$LDM_RUN/eval" \
  ${PKG_X[@]+"${PKG_X[@]}"}
echo "done: $OUT (model card $OUT/README.md). bash infer.sh uses models/shapes_zh when the official checkpoint is absent."
