#!/usr/bin/env bash
# The GPU measurement for a lent H100 or H200: sweep stages against one shared deadline, one report
# over them, everything under $OUT/gpu-<card>/ in at most 5 files, 1 folder deep.
#
#   on the GPU machine:  PYTHONPATH=. OUT=$OUT bash scripts/gpu_check.sh
#   dry run here (CPU):  OUT=/tmp/gpu-dry make gpu-check      (no GPU: prints the plan and the
#                        per-stage estimates, runs nothing; a second or two)
#   dry run of the mechanics on the CPU, stages rewritten to CPU targets and the tiny preset:
#                        OUT=/tmp/gpu-dry GPU_CHECK_CPU=1 GPU_CHECK_SECONDS=120 make gpu-check
#
# Stages, most important question first (scripts/gpu_plan.py prints each one's estimate from the
# H200 run of 2026-11-30; `*` marks figures that run had no timing for):
#   1 gpu-1-eager    torch:cuda + ort:cuda, five variants at N = 3, kept/merged, fp32+fp16, batch 1, 32
#                    40 groups, 80 cases in 10 contests   ~149 s (~40 s without onnxruntime-gpu)
#   2 gpu-2-graphs   compile-graphs:cuda, the five variants at N = 3, kept/merged, fp16, batch 1
#                    10 groups, 10 cases in 5 contests    ~69 s
#   3 gpu-3-aoti     aoti:cuda, model fusion N = 3, kept/merged, fp16, batch 1, 32 (two .pt2 builds)
#                    2 groups, 4 cases in 1 contest       ~109 s, the builds an estimate
#   4 gpu-4-nsweep   torch:cuda + ort:cuda, model fusion N = 2, 4, 8, kept/merged, fp32+fp16, batch 1, 32
#                    24 groups, 48 cases in 6 contests    ~94 s (~27 s without onnxruntime-gpu)
#   5 gpu-5-compile  compile:cuda (+ tensorrt:cuda, absent on the lent machine), model N = 3, fp16
#                    4 groups, 8 cases in 1 contest       ~33 s
# Total: 80 groups, 150 cases. What is dropped first: the deadline (GPU_CHECK_SECONDS - 45 s, default
# 240 s after the start, builds included) cuts the stage in flight and skips the later ones, so
# compile:cuda goes first, then the N-sweep, then AOTInductor; with onnxruntime-gpu, stages 1 and 2
# are what 5 minutes hold. GPU_CHECK_STAGES="gpu-3-aoti gpu-4-nsweep gpu-5-compile" runs the rest on
# a later lease.
# How it fits: each stage runs in ONE worker (isolation "device": one CUDA start-up, ~6 s), the
# fp32 and fp16 contests of a model share it; ONNX files and .pt2 packages are built in parallel
# processes on the machine's cores before it starts; the float64 oracle runs on the GPU
# (CCNBENCH_ORACLE_DEVICE=cuda: 20 s per N = 8 model on the CPU); contests time 20 ms blocks sized by
# device time, at most 1 s per batch size, one process per contest (intervals within-process).
# Whatever finished is bundled under $OUT by the EXIT trap, also when the script is cut short: a
# stage killed before it compacted its journal still returns its cases.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:?set OUT to the folder that comes back}
TOTAL=${GPU_CHECK_SECONDS:-285}
REPORT_SECONDS=45
read -r -a STAGES <<<"${GPU_CHECK_STAGES:-gpu-1-eager gpu-2-graphs gpu-3-aoti gpu-4-nsweep gpu-5-compile}"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export PYTHONPATH="${PYTHONPATH:-.}" PYTHONUNBUFFERED=1
# fp32 means fp32 on every target: ONNX Runtime's TensorRT provider has no TF32 switch and
# TensorRT enables TF32 by default; this variable, set before any process starts, turns it off
# in every NVIDIA library (fp16 cases are not affected).
export NVIDIA_TF32_OVERRIDE=0
# The project's commit for the results: from git where this is the project's own checkout; on the
# GPU machine .git does not travel, so pass it in: CCNBENCH_GIT_COMMIT=$(git rev-parse HEAD).
if [ -z "${CCNBENCH_GIT_COMMIT:-}" ] && [ "$(git rev-parse --show-toplevel 2>/dev/null)" = "$PWD" ]; then
  CCNBENCH_GIT_COMMIT=$(git rev-parse HEAD)
fi
[ -n "${CCNBENCH_GIT_COMMIT:-}" ] && export CCNBENCH_GIT_COMMIT

start=$(date +%s)
# One deadline (Unix time) for every stage: `ccnbench bench` reads it before its builds.
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
files=(); for s in "${STAGES[@]}"; do files+=("$(stage_file "$s")"); done
plan() {
  timeout 60 "$PY" scripts/gpu_plan.py --budget $((TOTAL - REPORT_SECONDS)) "${files[@]}"
}

# No GPU and no CPU rehearsal asked for: the dry run prints the plan and its estimates, nothing else.
if [ -z "$gpu_name" ] && [ "${GPU_CHECK_CPU:-0}" != 1 ]; then
  { echo "== dry run: no GPU here (nvidia-smi finds none); the plan for ${STAGES[*]}:"; plan; } 2>&1 | tee "$log"
  cp "$log" "$dest/console.log"
  exit 0
fi
[ -n "$gpu_name" ] && export CCNBENCH_ORACLE_DEVICE=cuda

# Bundle whatever finished: a stage cut before it compacted its journal still has its cases there.
finish() {
  trap - EXIT
  runs=()
  for s in "${STAGES[@]}"; do
    [ -f "$work/$s/results.json" ] || continue
    runs+=("$work/$s")
    timeout -k 5 30 "$PY" -c "import sys; from ccnbench import results; results.save(results.load(sys.argv[1]), sys.argv[1])" \
      "$work/$s" >>"$log" 2>&1 || echo "== $s: journal left as it is (compaction failed)" >>"$log"
  done
  if [ ! -f "$work/report/report.md" ] && [ ${#runs[@]} -gt 0 ]; then
    timeout -k 5 40 "$PY" -m ccnbench report "${runs[@]}" --out "$work/report" >>"$log" 2>&1
  fi
  cp "$work/report/report.md" "$work/report/report.html" "$dest/" 2>/dev/null
  (cd "$work" && tar -czf "$dest/results.tar.gz" --ignore-failed-read ./gpu-*/results.json ./gpu-*/journal.jsonl 2>/dev/null)
  (cd "$work" && tar -czf "$dest/logs-plots.tar.gz" --ignore-failed-read ./gpu-*/logs report/plots 2>/dev/null)
  cp "$log" "$dest/console.log" 2>/dev/null
  ls -la "$dest"
}
trap finish EXIT
trap 'echo "== stopped by a signal" >>"$log"; exit 143' TERM INT HUP

{
  echo "== $(date -u +%FT%TZ) gpu-check into $dest: stages ${STAGES[*]}, ${TOTAL} s in all," \
    "sweeps until $(date -u -d "@$CCNBENCH_DEADLINE" +%TZ), commit ${CCNBENCH_GIT_COMMIT:-unknown}"
  nvidia-smi --query-gpu=name,uuid,pci.bus_id,driver_version,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw \
    --format=csv 2>&1 || echo "no nvidia-smi"
  timeout 30 "$PY" -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), '| onnxruntime', o.__version__, o.get_available_providers())"
  plan
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
    echo "== $s exit code $? at $(date -u +%TZ)"
  done
  runs=()
  for s in "${STAGES[@]}"; do [ -f "$work/$s/results.json" ] && runs+=("$work/$s"); done
  if [ ${#runs[@]} -gt 0 ]; then
    timeout -k 5 40 "$PY" -m ccnbench report "${runs[@]}" --out "$work/report"
  fi
  nvidia-smi --query-gpu=clocks.sm,clocks.mem,temperature.gpu --format=csv 2>&1 || true
  echo "== $(date -u +%FT%TZ) done after $(($(date +%s) - start)) s"
} 2>&1 | tee "$log"
