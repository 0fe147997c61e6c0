#!/usr/bin/env bash
# The GPU measurement for the lent H100 (see ../shared/GPU.md): one sweep, its report, and the
# logs, written under $OUT in at most 8 files (the device tool's limit).
#
#   on the GPU machine:  PYTHONPATH=. OUT=$OUT bash scripts/gpu_check.sh
#   dry run here (CPU):  OUT=/tmp/gpu-dry bash scripts/gpu_check.sh   (CUDA targets become 'unavailable')
#
# SWEEP picks another sweep file or bundled name; BUDGET_MINUTES stops starting new case groups
# after that long so the report is always written inside the device session.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:?set OUT to the folder that comes back}
SWEEP=${SWEEP:-gpu-h100}
BUDGET_MINUTES=${BUDGET_MINUTES:-6.5}
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export PYTHONPATH="${PYTHONPATH:-.}" PYTHONUNBUFFERED=1

run=/tmp/ccnbench-gpu-check
rm -rf "$run" && mkdir -p "$OUT/gpu-h100/plots"
log="$run-console.log"
{
  echo "== $(date -u +%FT%TZ) gpu-check: sweep $SWEEP, budget $BUDGET_MINUTES min"
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw --format=csv 2>&1 || echo "no nvidia-smi"
  "$PY" -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), '| onnxruntime', o.__version__, o.get_available_providers())"
  "$PY" -m ccnbench env
  "$PY" -m ccnbench bench --config "$SWEEP" --out "$run" --budget-minutes "$BUDGET_MINUTES" --no-report
  echo "== bench exit code $?"
  "$PY" -m ccnbench report "$run"
  "$PY" -m ccnbench recommend "$run"
  nvidia-smi --query-gpu=clocks.sm,clocks.mem,temperature.gpu --format=csv 2>&1 || true
} 2>&1 | tee "$log"

cp "$run/results.json" "$run/report.md" "$run/report.html" "$OUT/gpu-h100/" 2>/dev/null
cp "$run"/plots/*.png "$OUT/gpu-h100/plots/" 2>/dev/null
tar -czf "$OUT/gpu-h100/logs.tar.gz" -C /tmp "$(basename "$run")/logs" "$(basename "$log")" 2>/dev/null
ls -la "$OUT/gpu-h100" "$OUT/gpu-h100/plots"
