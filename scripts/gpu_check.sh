#!/usr/bin/env bash
# The GPU measurement for a lent H100 or H200: three sweep stages against one shared deadline, one
# report over all three, everything under $OUT/gpu-<card>/ in at most 8 files, 1 folder deep.
#
#   on the GPU machine:  PYTHONPATH=. OUT=$OUT bash scripts/gpu_check.sh
#   dry run here (CPU):  OUT=/tmp/gpu-dry make gpu-check      (CUDA targets listed as unavailable)
#   dry run of the mechanics on the CPU, stages rewritten to CPU targets and the tiny preset:
#                        OUT=/tmp/gpu-dry GPU_CHECK_CPU=1 GPU_CHECK_SECONDS=60 make gpu-check
#
# Stages, cheapest question first (estimates for one H100, torch 2.11, CUDA 13, 16 cores; a fresh
# worker costs ~4 s of Python, torch and CUDA start-up). Every stage times the formats of one model
# at one precision side by side in one worker (a contest: 20 ms blocks in interleaved rounds, at
# most 1 s per batch size, one process per contest; see the [protocol] tables):
#   1 gpu-1-eager   torch:cuda + ort:cuda, 7 models x kept/merged, fp32+fp16, batch 1 and 32
#                   56 groups, 112 cases in 14 contests: 14 starts ~55 s + ORT sessions and
#                   agreement ~40 s + timing <= 28 s ~ 125 s
#   2 gpu-2-graphs  compile-graphs:cuda, model fusion N = 2, 4, 8 x kept/merged, fp16, batch 1
#                   6 groups, 6 cases in 3 contests: 3 starts ~12 s + 6 inductor compilations
#                   ~15 s each + timing <= 3 s ~ 105 s
#   3 gpu-3-rest    compile:cuda + tensorrt:cuda, the same N-sweep, fp16, batch 1 and 32
#                   12 groups, 24 cases: whatever the deadline leaves (tensorrt:cuda costs nothing
#                   where TensorRT is absent, as on the lent machine)
#   the report over all stages ~15 s; environment and nvidia-smi ~10 s.
# Total: 74 groups, 142 cases; the sweeps stop at GPU_CHECK_SECONDS - 45 s (default 285 - 45 =
# 240 s after the start, exports included; the group in flight is killed), so the whole script
# ends within ~285 s, and a hard `timeout` around each command backs that up. Whatever finished
# is copied under $OUT by the EXIT trap, also when the script is cut short.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:?set OUT to the folder that comes back}
TOTAL=${GPU_CHECK_SECONDS:-285}
REPORT_SECONDS=45
STAGES=(gpu-1-eager gpu-2-graphs gpu-3-rest)
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export PYTHONPATH="${PYTHONPATH:-.}" PYTHONUNBUFFERED=1
export CCNBENCH_GIT_COMMIT="${CCNBENCH_GIT_COMMIT:-unknown}"  # no .git on a lent machine: call CCNBENCH_GIT_COMMIT=$(git rev-parse --short=12 HEAD) bash scripts/gpu_check.sh
# fp32 means fp32 on every target: ONNX Runtime's TensorRT provider has no TF32 switch and
# TensorRT enables TF32 by default; this variable, set before any process starts, turns it off
# in every NVIDIA library (fp16 cases are not affected).
export NVIDIA_TF32_OVERRIDE=0

start=$(date +%s)
# One deadline (Unix time) for every stage: `ccnbench bench` reads it before its exports.
export CCNBENCH_DEADLINE=$((start + TOTAL - REPORT_SECONDS))
left() { echo $((start + TOTAL - $(date +%s))); }

# Named after the card, since either may be lent.
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
case "$gpu_name" in
  *H200*) card=gpu-h200 ;;
  *H100*) card=gpu-h100 ;;
  "") card=gpu-none ;;
  *) card=gpu-$(echo "$gpu_name" | tr -c 'A-Za-z0-9\n' '-' | tr 'A-Z' 'a-z') ;;
esac
work=/tmp/ccnbench-gpu-check
dest="$OUT/$card"
rm -rf "$work" && mkdir -p "$work/stages" "$dest"
log="$work/console.log"

# Copy whatever finished: per-stage results, the report, the console log, worker logs and plots.
finish() {
  trap - EXIT
  runs=()
  for s in "${STAGES[@]}"; do [ -f "$work/$s/results.json" ] && runs+=("$work/$s"); done
  if [ ! -f "$work/report/report.md" ] && [ ${#runs[@]} -gt 0 ]; then
    timeout -k 5 40 "$PY" -m ccnbench report "${runs[@]}" --out "$work/report" >>"$log" 2>&1
  fi
  for s in "${STAGES[@]}"; do
    cp "$work/$s/results.json" "$dest/results-${s#gpu-}.json" 2>/dev/null
  done
  cp "$work/report/report.md" "$work/report/report.html" "$dest/" 2>/dev/null
  (cd "$work" && tar -czf "$dest/logs-plots.tar.gz" --ignore-failed-read ./*/logs report/plots 2>/dev/null)
  cp "$log" "$dest/console.log" 2>/dev/null
  ls -la "$dest"
}
trap finish EXIT
trap 'echo "== stopped by a signal" >>"$log"; exit 143' TERM INT HUP

# GPU_CHECK_CPU=1: the same stages on CPU targets and the tiny preset, to try the deadline,
# partial results and report here.
stage_file() {
  if [ "${GPU_CHECK_CPU:-0}" = 1 ]; then
    sed -e 's/"tensorrt:cuda"//; s/compile-graphs:cuda/compile:cpu/; s/:cuda/:cpu/g; s/"medium"/"tiny"/' \
      "ccnbench/sweeps/$1.toml" >"$work/stages/$1.toml"
    echo "$work/stages/$1.toml"
  else
    echo "ccnbench/sweeps/$1.toml"
  fi
}

{
  echo "== $(date -u +%FT%TZ) gpu-check into $dest: stages ${STAGES[*]}, ${TOTAL} s in all," \
    "sweeps until $(date -u -d "@$CCNBENCH_DEADLINE" +%TZ)"
  nvidia-smi --query-gpu=name,uuid,pci.bus_id,driver_version,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw \
    --format=csv 2>&1 || echo "no nvidia-smi"
  timeout 30 "$PY" -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), '| onnxruntime', o.__version__, o.get_available_providers())"
  # The plan: every group in the order it runs, with the case counts (one Python start for all).
  files=(); for s in "${STAGES[@]}"; do files+=("$(stage_file "$s")"); done
  timeout 60 "$PY" - "${files[@]}" <<'EOF'
import sys
from ccnbench.sweep import load_config
total = 0
for path in sys.argv[1:]:
    config = load_config(path)
    groups = config.expand()
    total += sum(len(g.batches) for g in groups)
    print(f"-- plan {config.name}: {len(groups)} groups, {sum(len(g.batches) for g in groups)} cases")
    for g in groups:
        print(f"   {g.source.label} {g.source.layout} {g.target} {g.precision} batch {','.join(map(str, g.batches))}")
print(f"-- plan: {total} cases in all")
EOF
  for s in "${STAGES[@]}"; do
    remaining=$(left)
    if [ $((remaining - REPORT_SECONDS)) -le 5 ]; then
      echo "== $s skipped: the deadline has passed"
      continue
    fi
    echo "== $(date -u +%TZ) stage $s ($((remaining - REPORT_SECONDS)) s to the deadline)"
    # The deadline stops the sweep from inside; the hard timeout only backs it up.
    timeout -k 5 $((remaining - REPORT_SECONDS + 15)) \
      "$PY" -m ccnbench bench --config "$(stage_file "$s")" --out "$work/$s" --no-report
    echo "== $s exit code $?"
  done
  runs=()
  for s in "${STAGES[@]}"; do [ -f "$work/$s/results.json" ] && runs+=("$work/$s"); done
  if [ ${#runs[@]} -gt 0 ]; then
    timeout -k 5 40 "$PY" -m ccnbench report "${runs[@]}" --out "$work/report"
  fi
  nvidia-smi --query-gpu=clocks.sm,clocks.mem,temperature.gpu --format=csv 2>&1 || true
  echo "== $(date -u +%FT%TZ) done after $(($(date +%s) - start)) s"
} 2>&1 | tee "$log"
