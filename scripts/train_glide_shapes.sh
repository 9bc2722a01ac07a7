#!/usr/bin/env bash
# The built-in shapes-world GLIDE from nothing, in one command that resumes:
#
#   bash scripts/train_glide_shapes.sh                        # -> output/glide_shapes
#   bash scripts/train_glide_shapes.sh models/glide_shapes    # replace the model run_glide_infer.sh falls back to
#
# Stages, each with its log in $RUNS/glide-shapes-<stage>.log:
#   export     the world: N_IMAGES captioned 256 px renders (anti-aliased)         -> $DATA
#   export64   the same world rendered at 64 px (anti-aliased), the base's data     -> $DATA64
#   tokenizer  the world's word-level SentencePiece model (if $OUT lacks it)       -> $OUT/shapes-sp.model
#   base-v3    the base model's first phase, 64 px, cosine chain (configs/glide/shapes-base-v3.yaml)
#                                                                                  -> $RUNS/glide-shapes-base-v3
#   base-v4    its second, from base-v3's EMA on the chain with SNR / 16 (shapes-base-v4.yaml) -> $RUNS/glide-shapes-base-v4
#   base       its third, from base-v4's EMA, the loss on the outlines and the middle of the chain
#              (shapes-base-v5.yaml)                                                -> $RUNS/glide-shapes-base
#   base-expert  the base's low-noise expert: a copy of base trained on t < 450 only, its 4 px level and middle
#              held (shapes-base-expert.yaml)                                       -> $RUNS/glide-shapes-base-expert
#   base-expert-attn  its second phase: text attention added at the 32 px level (shapes-base-expert-attn.yaml)
#                                                                                   -> $RUNS/glide-shapes-base-expert-attn
#   sr         the 64 -> 256 model on 64 px crops (configs/glide/shapes-sr.yaml)    -> $RUNS/glide-shapes-sr
#   srgan      the 256 -> 1024 SRGAN (configs/glide/shapes-srgan.yaml)              -> $RUNS/glide-shapes-srgan
#   srgan-flat     its fine-tune for exact flat areas (shapes-srgan-flat.yaml)     -> $RUNS/glide-shapes-srgan-flat
#   srgan-finetune L1-led on 256 scenes, the shipped SRGAN (shapes-srgan-finetune.yaml) -> $RUNS/glide-shapes-srgan-finetune
#   package    fp16 checkpoints, tokenizer, config, logs and curves                 -> $OUT
#   eval       adherence at 64 / 256 / 1024 px on held-out and seen prompts         -> $OUT/eval
#
# Run the same command again after an interruption: finished stages are skipped and a stopped
# training resumes from its newest checkpoint. To start over, delete $RUNS/glide-shapes-* (and $DATA).
# Environment: PYTHON (default .venv/bin/python), DATA (data/shapes_glide256), DATA64 (data/shapes_glide64), RUNS
# (runs), N_IMAGES (20000), BASE_V3_ARGS / BASE_V4_ARGS / BASE_ARGS / BASE_EXPERT_ARGS / SR_ARGS / SRGAN_ARGS / SRGAN_FLAT_ARGS / SRGAN_FINETUNE_ARGS
# (config overrides of each training stage, e.g. BASE_ARGS="train.steps=2000"),
# EVAL_ARGS (extra flags of scripts/eval_glide_shapes.py), RUNTIME_ARGS (e.g. "--device_target GPU").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/_train_stages.sh
source "$ROOT/scripts/_train_stages.sh"
find_python
OUT="$(model_folder_arg output/glide_shapes "$@")" || exit 2
DATA="${DATA:-data/shapes_glide256}"
DATA64="${DATA64:-data/shapes_glide64}"
RUNS="${RUNS:-runs}"
N_IMAGES="${N_IMAGES:-20000}"
read -r -a BASE_V3_X <<< "${BASE_V3_ARGS:-}"
read -r -a BASE_V4_X <<< "${BASE_V4_ARGS:-}"
read -r -a BASE_X <<< "${BASE_ARGS:-}"
read -r -a BASE_EXPERT_X <<< "${BASE_EXPERT_ARGS:-}"
read -r -a BASE_EXPERT_ATTN_X <<< "${BASE_EXPERT_ATTN_ARGS:-}"
read -r -a SR_X <<< "${SR_ARGS:-}"
read -r -a SRGAN_X <<< "${SRGAN_ARGS:-}"
read -r -a SRGAN_FLAT_X <<< "${SRGAN_FLAT_ARGS:-}"
read -r -a SRGAN_FT_X <<< "${SRGAN_FINETUNE_ARGS:-}"
read -r -a EVAL_X <<< "${EVAL_ARGS:-}"
read -r -a RT_X <<< "${RUNTIME_ARGS:-}"
export GLOG_v="${GLOG_v:-3}"
mkdir -p "$RUNS" "$OUT"

STAGE_LOG=glide-shapes

if [ -f "$DATA/data.csv" ]; then
  echo "== export: $DATA holds an export, kept"
else
  stage export "$PY" scripts/export_shapes_csv.py --out "$DATA" --n "$N_IMAGES" --image_size 256 --antialias --overwrite
fi
if [ -f "$DATA64/data.csv" ]; then
  echo "== export64: $DATA64 holds an export, kept"
else
  stage export64 "$PY" scripts/export_shapes_csv.py --out "$DATA64" --n "$N_IMAGES" --image_size 64 --antialias --overwrite
fi
TOK="$OUT/shapes-sp.model"
if [ -f "$TOK" ]; then
  echo "== tokenizer: $TOK exists, kept"
else
  stage tokenizer "$PY" -c "import sys; from mind_diffusion.shapes.sentencepiece_vocab import build_sentencepiece; \
print(build_sentencepiece(sys.argv[1], word_level=True))" "$TOK"
fi

train base-v3 train_glide.py configs/glide/shapes-base-v3.yaml "$RUNS/glide-shapes-base-v3" --no_progress \
  "data.path=$DATA64" "tokenizer.sp_model=$TOK" "train.output_dir=$RUNS/glide-shapes-base-v3" ${BASE_V3_X[@]+"${BASE_V3_X[@]}"}
train base-v4 train_glide.py configs/glide/shapes-base-v4.yaml "$RUNS/glide-shapes-base-v4" --no_progress \
  "data.path=$DATA64" "tokenizer.sp_model=$TOK" "train.output_dir=$RUNS/glide-shapes-base-v4" \
  "init.checkpoint=$RUNS/glide-shapes-base-v3/glide_gen_ema.ckpt" ${BASE_V4_X[@]+"${BASE_V4_X[@]}"}
train base train_glide.py configs/glide/shapes-base-v5.yaml "$RUNS/glide-shapes-base" --no_progress \
  "data.path=$DATA64" "tokenizer.sp_model=$TOK" "train.output_dir=$RUNS/glide-shapes-base" \
  "init.checkpoint=$RUNS/glide-shapes-base-v4/glide_gen_ema.ckpt" ${BASE_X[@]+"${BASE_X[@]}"}
train base-expert train_glide.py configs/glide/shapes-base-expert.yaml "$RUNS/glide-shapes-base-expert" --no_progress \
  "data.path=$DATA64" "tokenizer.sp_model=$TOK" "train.output_dir=$RUNS/glide-shapes-base-expert" \
  "init.checkpoint=$RUNS/glide-shapes-base/glide_gen_ema.ckpt" ${BASE_EXPERT_X[@]+"${BASE_EXPERT_X[@]}"}
train base-expert-attn train_glide.py configs/glide/shapes-base-expert-attn.yaml "$RUNS/glide-shapes-base-expert-attn" \
  --no_progress "data.path=$DATA64" "tokenizer.sp_model=$TOK" "train.output_dir=$RUNS/glide-shapes-base-expert-attn" \
  "init.checkpoint=$RUNS/glide-shapes-base-expert/glide_gen_ema.ckpt" ${BASE_EXPERT_ATTN_X[@]+"${BASE_EXPERT_ATTN_X[@]}"}
train sr train_glide.py configs/glide/shapes-sr.yaml "$RUNS/glide-shapes-sr" --no_progress \
  "data.path=$DATA" "tokenizer.sp_model=$TOK" "train.output_dir=$RUNS/glide-shapes-sr" ${SR_X[@]+"${SR_X[@]}"}
train srgan train_srgan.py configs/glide/shapes-srgan.yaml "$RUNS/glide-shapes-srgan" \
  --set "train.output_dir=$RUNS/glide-shapes-srgan" ${SRGAN_X[@]+"${SRGAN_X[@]}"}
train srgan-flat train_srgan.py configs/glide/shapes-srgan-flat.yaml "$RUNS/glide-shapes-srgan-flat" \
  --set "train.output_dir=$RUNS/glide-shapes-srgan-flat" "init.generator=$RUNS/glide-shapes-srgan/srgan.ckpt" \
  ${SRGAN_FLAT_X[@]+"${SRGAN_FLAT_X[@]}"}
train srgan-finetune train_srgan.py configs/glide/shapes-srgan-finetune.yaml "$RUNS/glide-shapes-srgan-finetune" \
  --set "train.output_dir=$RUNS/glide-shapes-srgan-finetune" "init.generator=$RUNS/glide-shapes-srgan-flat/srgan.ckpt" \
  ${SRGAN_FT_X[@]+"${SRGAN_FT_X[@]}"}

stage package "$PY" scripts/package_glide_shapes.py --base_v3 "$RUNS/glide-shapes-base-v3" --base_v4 "$RUNS/glide-shapes-base-v4" \
  --base "$RUNS/glide-shapes-base" --base_expert_v1 "$RUNS/glide-shapes-base-expert" \
  --base_expert "$RUNS/glide-shapes-base-expert-attn" --sr "$RUNS/glide-shapes-sr" \
  --srgan "$RUNS/glide-shapes-srgan-finetune" --out "$OUT" --tokenizer "$TOK"
rm -rf "$OUT/eval.tmp"
stage eval "$PY" scripts/eval_glide_shapes.py --model "$OUT" --out "$OUT/eval.tmp" \
  ${RT_X[@]+"${RT_X[@]}"} ${EVAL_X[@]+"${EVAL_X[@]}"}
rm -rf "$OUT/eval"
mv "$OUT/eval.tmp" "$OUT/eval"
echo "done: $OUT (tables: $OUT/eval/adherence.md). scripts/run_glide_infer.sh falls back to models/glide_shapes" \
     "when the official Taichu-GLIDE checkpoints are absent."
