#!/usr/bin/env bash
# A-A check: run the CI sweep twice back to back on the unchanged tree and print how well the
# two runs agree (the figures the regression gate's thresholds are sized from), then what the
# gate says about them. Usage: scripts/aa_check.sh [SWEEP] [OUT_DIR]   (default: ci-quick, a temp dir)
# Timing figures need a quiet machine: anything else running moves them.
set -euo pipefail
cd "$(dirname "$0")/.."
sweep=${1:-ci-quick}
out=${2:-$(mktemp -d)}
py=${PYTHON:-python}
mkdir -p "$out"
ccn() { "$py" -m ccnbench "$@"; }
for run in a b; do
    start=$(date +%s)
    ccn bench --config "$sweep" --out "$out/$run" --artifacts "$out/artifacts" --no-report > "$out/$run.log"
    echo "run $run: $(( $(date +%s) - start )) s"
done
"$py" - "$out/a" "$out/b" <<'PY'
import sys
from ccnbench import results
from ccnbench.answers import derived
figures = derived.reproducibility(results.load(sys.argv[1]), results.load(sys.argv[2]))
print(f"ratio to reference within +-10 %: {figures['reference_within_10']:.0%} of {figures['reference_cases']} cases"
      f" (worst {figures['reference_worst']:.3f}x)")
print(f"merged/kept within +-5 %:         {figures['merged_within_5']:.0%} of {figures['merged_cases']} cases"
      f" (worst {figures['merged_worst']:.3f}x)")
print(f"raw medians within +-10 %:        {figures['median_within_10']:.0%}")
PY
ccn compare "$out/a" "$out/b" --threshold 15% | tail -n 3 || true
