#!/usr/bin/env bash
# Device check: one script, at most 8 minutes (--budget), for the first machine with a GPU or an
# Ascend card. Everything lands in one folder (default bench/results/device_check-<device>-<time>/):
#   env.txt        python, MindSpore, device, driver (nvidia-smi / npu-smi), run_check
#   install.log    what was missing and installed (requirements-dev.txt; offline: skipped)
#   tests.log/xml  the network tests on the device, graph and pynative mode, fp16 policy
#                  (MD_TEST_DEVICE, honoured by tests/conftest.py)
#   unet_step.log  bench/ldm_unet_step.py: full-size SD-v1 UNet step, fp16, ours vs diffusers
#                  on the same GPU (Ascend: ours only)
#   infer1/2.log   bash infer.sh at 512x512, 15 DPM-Solver steps, random full-size weights,
#                  first and second run (compile cache), with --timings
#   summary.md     one row per step: exit code, seconds, the key line
# Usage:
#   bash bench/device_check.sh                # device: GPU if MindSpore sees one, else Ascend
#   bash bench/device_check.sh --device GPU --out /tmp/dc
#   bash bench/device_check.sh --dry-run      # on CPU with small sizes: proves the script itself
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV_PY="$ROOT/.venv/bin/python"
[ -x "$VENV_PY" ] || VENV_PY=python3
PY="${PYTHON:-$VENV_PY}"
DEVICE=auto; DRY=0; OUT=""; BUDGET=480
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --budget) BUDGET="$2"; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
START=$(date +%s)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export GLOG_v="${GLOG_v:-3}"

if [ "$DRY" = 1 ]; then
  DEVICE=CPU
elif [ "$DEVICE" = auto ]; then
  DEVICE=$("$PY" - <<'EOF' 2>/dev/null
import mindspore as ms
print(next((d for d in ("GPU", "Ascend") if ms.hal.is_available(d)), "none"))
EOF
  )
  DEVICE="${DEVICE:-none}"
fi
OUT="${OUT:-$ROOT/bench/results/device_check-${DEVICE}$([ "$DRY" = 1 ] && echo -dry)-$(date -u +%Y%m%dT%H%M)}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.md"
{
  echo "# Device check ($DEVICE$([ "$DRY" = 1 ] && echo ', dry run on CPU with small sizes'))"
  echo
  echo "Started $(date -u +%FT%TZ) on $(hostname); budget ${BUDGET} s. Logs beside this file."
  echo
  echo "| step | exit | seconds | result |"
  echo "|---|---:|---:|---|"
} > "$SUMMARY"

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# step NAME LIMIT_S PATTERN CMD...: run with the smaller of LIMIT_S and the time left; log to
# NAME.log; one summary row with the last log line matching PATTERN
step() {
  local name="$1" limit="$2" pattern="$3"; shift 3
  local t; t=$(left); [ "$t" -lt "$limit" ] && limit="$t"
  if [ "$limit" -lt 15 ]; then
    echo "| $name | - | 0 | skipped: budget spent |" >> "$SUMMARY"; return 0
  fi
  echo "[device_check] $name (up to ${limit} s) ..."
  local t0 rc; t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1; rc=$?
  local line; line=$(grep -E "$pattern" "$OUT/$name.log" | tail -1 | tr '|' '/' | cut -c1-300)
  [ "$rc" = 124 ] && line="TIMED OUT after ${limit} s; $line"
  echo "| $name | $rc | $(( $(date +%s) - t0 )) | ${line:-see $name.log} |" >> "$SUMMARY"
  return 0
}

# 1. the environment
{
  echo "device: $DEVICE (dry run: $DRY)"; "$PY" --version
  "$PY" -c "import mindspore as ms; print('mindspore', ms.__version__); ms.run_check()" 2>&1 | tail -5
  command -v nvidia-smi >/dev/null && nvidia-smi
  command -v npu-smi >/dev/null && npu-smi info
  nproc; free -g
} > "$OUT/env.txt" 2>&1
if [ "$DEVICE" = none ]; then
  echo "| env | 1 | 0 | MindSpore sees no GPU or Ascend device (see env.txt); pass --dry-run to check on CPU |" >> "$SUMMARY"
  cat "$SUMMARY"; exit 1
fi

# 2. install what is missing (needs the package index; an offline machine keeps what it has)
do_install() {
  local missing
  missing=$("$PY" - <<'EOF'
import importlib.util
print(" ".join(m for m in ("mindspore", "numpy", "omegaconf", "pytest", "xdist", "torch", "diffusers", "PIL", "tqdm")
               if importlib.util.find_spec(m) is None))
EOF
  )
  echo "missing: ${missing:-nothing}"
  if [ -n "$missing" ]; then "$PY" -m pip install -r requirements-dev.txt; fi
}
export PY
export -f do_install
step install 150 "missing|Successfully|ERROR" bash -c do_install

# 3. the network tests on the device: graph and pynative (the ms_mode fixture), fp16 policy
TESTS=(tests/test_ldm_unet.py tests/test_ldm_vae.py tests/test_ldm_text_encoder.py tests/test_guidance.py
       tests/test_precision_and_data.py tests/test_glide_networks.py tests/test_ddpm_unet.py)
[ "$DRY" = 1 ] && TESTS=(tests/test_guidance.py tests/test_precision_and_data.py)
step tests 200 "passed|failed|error" env MD_TEST_DEVICE="$DEVICE" MIND_DIFFUSION_COMPILE_CACHE=off \
  "$PY" -m pytest -q -n 0 -p no:cacheprovider -k "graph or pynative" --junitxml "$OUT/tests.xml" "${TESTS[@]}"

# 4. the full-size UNet step in fp16, ours vs diffusers on the same GPU
if [ "$DRY" = 1 ]; then
  step unet_step 150 "Speed:" "$PY" bench/ldm_unet_step.py --quick --repeats 2
elif [ "$DEVICE" = GPU ]; then
  step unet_step 150 "Speed:" "$PY" bench/ldm_unet_step.py --device GPU --fp16 --repeats 5 --out "$OUT"
else
  echo "| unet_step | - | 0 | skipped: diffusers has no $DEVICE device |" >> "$SUMMARY"
fi

# 5. infer.sh at 512x512, 15 DPM-Solver steps, random full-size weights: first and second run
SET=(); SIZE=(); CACHE="$OUT/compile_cache"
if [ "$DRY" = 1 ]; then  # the same code path with a small network and image
  SET=(--set model.unet.model_channels=32 model.unet.num_heads=2 model.unet.context_dim=64
       model.unet.num_groups=8 model.vae.ch=16 model.vae.num_groups=8 model.text_encoder.width=64
       model.text_encoder.layers=2 model.text_encoder.heads=2)
  SIZE=(--H 64 --W 64 --ddim_steps 2)
fi
step make_ckpt 120 "wrote" "$PY" bench/startup.py --make_random_ckpt "$OUT/model" "${SET[@]}"
for run in 1 2; do
  step "infer$run" 150 "timings:" bash infer.sh "一个红色的圆形在左边" --ckpt_path "$OUT/model" \
    --ckpt_name wukong-random.ckpt --device_target "$DEVICE" --n_samples 1 --n_iter 1 --timings \
    --compile_cache_dir "$CACHE" --output_path "$OUT/infer" "${SIZE[@]}" "${SET[@]}"
done
rm -f "$OUT/model/wukong-random.ckpt"  # 4 GB of random numbers: not worth keeping

echo >> "$SUMMARY"
echo "Finished in $(( $(date +%s) - START )) s." >> "$SUMMARY"
grep -h -m1 -A9 "^| implementation" "$OUT/unet_step.log" >> "$SUMMARY" 2>/dev/null
cat "$SUMMARY"
