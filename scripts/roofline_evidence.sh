#!/usr/bin/env bash
# The measurements behind docs/evidence/roofline.md, into results/roofline-evidence/ (or $1):
#   roofs-{1,2,3}.json  this machine's roofs measured three times (--refresh), a minute apart at most:
#                       the spread within one measurement and between measurements;
#   roofs.txt           the last of them as `ccnbench roofs` prints it;
#   model.txt/.json     model fusion (small, N = 3) explained at batch 1 and 8, kept and merged, on
#                       ort:cpu and openvino:cpu: every layer against its runtime's roofs;
#   run/                a bench of the same cases (with torch:cpu), for the shipped format's distance
#                       from its roof (`ccnbench recommend`).
# Run it when nothing else runs on the machine: a roof measured under load is too low. THREADS
# (default: the cases' thread count, `ccnbench env`) sets the thread count of everything. ~6
# minutes on 2 cores.
set -euo pipefail
out=${1:-results/roofline-evidence}
ccnbench=${CCNBENCH:-ccnbench}
threads=${THREADS:-$("$ccnbench" env --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["threads per CPU target"])')}
mkdir -p "$out"
export COLUMNS=${COLUMNS:-170}
"$ccnbench" env --json > "$out/env.json"
for i in 1 2 3; do
  "$ccnbench" roofs --precision fp32,fp16,bf16 --threads "$threads" --refresh --json > "$out/roofs-$i.json"
done
"$ccnbench" roofs --precision fp32,fp16,bf16 --threads "$threads" > "$out/roofs.txt"
"$ccnbench" explain --preset small --variant model --branches 3 --batch 1,8 \
  --targets ort:cpu,openvino:cpu --threads "$threads" --out "$out/model.json" > "$out/model.txt"
rm -rf "$out/run"
"$ccnbench" bench --preset small --variant model --branches 3 --batch 1,8 --layout all \
  --targets torch:cpu,ort:cpu,openvino:cpu --threads "$threads" --out "$out/run" > "$out/bench.txt" 2>&1
"$ccnbench" recommend "$out/run" > "$out/recommend.txt" 2>&1 || true
rm -rf "$out/run/logs"
