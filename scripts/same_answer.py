"""Do two runs of one sweep ship the same formats? The `make bench` stability check.

Usage: python scripts/same_answer.py RUN_A RUN_B [--all]

Runs `recommend --shippable` (or every format with --all) on both runs and compares, per
(model, batch, device), the format each ships. Passes (exit 0) when at most one answer in ten
differs, each run has at most one inconclusive answer, and every answer that differs was called
inconclusive by at least one of the runs. It also prints how busy the machine was during each run
(``derived.machine_load``): the bar is for a quiet machine.
"""

from __future__ import annotations

import argparse
import math
import sys

from ccnbench import shard
from ccnbench.answers import derived
from ccnbench.answers.recommend import Recommendation, recommend
from ccnbench.results import CaseResult


def answers(cases: list[CaseResult], shippable: bool) -> dict[tuple[str, int, str], Recommendation]:
    return {(r.model, r.batch, r.device): r for r in recommend(cases, shippable=shippable)}


def load(cases: list[CaseResult]) -> str:
    """How busy the machine was during the run (``derived.machine_load``), as printed."""
    value = derived.machine_load(cases)
    if value is None:
        return "unknown"
    return f"{value:.2f}x" + (" (busy)" if value > derived.BUSY_LOAD else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--all", action="store_true", help="every format, not only --shippable ones")
    args = parser.parse_args(argv)
    runs = [derived.all_cases(shard.load_runs([path])) for path in (args.first, args.second)]
    a, b = (answers(cases, not args.all) for cases in runs)
    keys = sorted(set(a) & set(b))
    same, bad_flips = 0, []
    for key in keys:
        x, y = a[key], b[key]
        lx, ly = ((r.best.label if r.best else "nothing") for r in (x, y))
        mark = "same" if lx == ly else "DIFFERS"
        print(f"{key[0]} b{key[1]} {key[2]}: {lx} [{x.verdict or '-'}] | {ly} [{y.verdict or '-'}]  {mark}")
        if lx == ly:
            same += 1
        elif not (x.inconclusive or y.inconclusive):
            bad_flips.append(key)
    inconclusive = [sum(r.inconclusive for r in run.values()) for run in (a, b)]
    allowed = math.floor(len(keys) / 10)
    print(f"same answer: {same}/{len(keys)}; inconclusive: {inconclusive[0]} and {inconclusive[1]}; "
          f"flips without an inconclusive: {len(bad_flips)}")  # fmt: skip
    # The bar is for a quiet machine: on a busy one fewer processes stay calm and more answers stay open.
    print(f"machine load (medians over fastest calls; busy above {derived.BUSY_LOAD:.2f}x): "
          f"{load(runs[0])} and {load(runs[1])}")  # fmt: skip
    ok = keys and len(keys) - same <= allowed and max(inconclusive) <= 1 and not bad_flips
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
