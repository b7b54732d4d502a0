#!/usr/bin/env bash
# The device check: one short run on a borrowed GPU machine measures what the README claims.
#
#   bash scripts/gpu_check.sh OUT_DIR          # on the GPU machine, from the repository root
#
# Installs nothing from the network (the machine has torch, accelerate, safetensors, scipy, typer,
# rich, einops, matplotlib; locodiff itself is installed with --no-deps when missing). Writes into
# OUT_DIR: environment.txt, throughput.{txt,json} (img/s, GFLOP/img, TFLOP/s and the share of the
# GPU's bf16 peak for the gpu and paper presets' networks), smoke.log and smoke/ (the gpu preset's
# whole study with every model's training cut to a few thousand images: every stage runs on the
# GPU once), and summary.txt. Each part has its own time limit; the whole script stays under 8 min.
# For a dry run of the script's plumbing on a CPU: BENCH_PRESETS=micro SMOKE_IMAGES=256.
set -uo pipefail
OUT=${1:?usage: bash scripts/gpu_check.sh OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
PY=${PYTHON:-python}
BENCH_PRESETS=${BENCH_PRESETS:-gpu paper}
SMOKE_IMAGES=${SMOKE_IMAGES:-4096}
START=$(date +%s)
log() { echo "[$(( $(date +%s) - START )) s] $*" | tee -a "$OUT/summary.txt"; }

if ! $PY -c "import locodiff" 2>/dev/null; then
  $PY -m pip install --no-deps --no-build-isolation -q -e . >"$OUT/install.log" 2>&1 || { log "install failed (see install.log)"; exit 1; }
fi
{ nvidia-smi 2>&1 || echo "no nvidia-smi"; $PY -c "import torch, locodiff; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none', 'bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported(), 'locodiff', locodiff.__version__)"; } >"$OUT/environment.txt" 2>&1
log "$(tail -1 "$OUT/environment.txt")"

rc=0
timeout 150 $PY benchmarks/gpu_train.py --presets $BENCH_PRESETS --json "$OUT/throughput.json" 2>&1 | tee "$OUT/throughput.txt"
status=${PIPESTATUS[0]}  # 124: timed out (what was measured so far is in throughput.txt)
[ "$status" -eq 0 ] && log "throughput: done" || { log "throughput: failed or timed out (exit $status)"; rc=1; }

# The smoke stage: the gpu preset end to end with training cut short (SMOKE_IMAGES per model).
SETS=(-s "out_dir='$OUT/smoke'" -s "evaluate.heatmap.train_images=$SMOKE_IMAGES")
for model in $($PY -c "from locodiff.study_config import load_study_config as l; print(' '.join(l('gpu').enabled_models()))"); do
  SETS+=(-s "models.$model.train.total_images=$SMOKE_IMAGES")
done
timeout 270 $PY -m locodiff.cli study --preset gpu "${SETS[@]}" >"$OUT/smoke.log" 2>&1
status=$?
grep -E "done in|img/s\)|error" "$OUT/smoke.log" | tee -a "$OUT/summary.txt"
[ "$status" -eq 0 ] && log "smoke study: done" || { log "smoke study: failed or timed out (exit $status; see smoke.log)"; rc=1; }
cp "$OUT/smoke/timings.json" "$OUT/smoke_timings.json" 2>/dev/null || true
log "total $(( $(date +%s) - START )) s"
exit "$rc"
