"""A-A cross-coverage: are the 95 % intervals wide enough to hold the next run's answer?

Usage: python scripts/aa_coverage.py RUN_A1 RUN_B1 [RUN_A2 RUN_B2 ...]

Each pair is two runs of one sweep on one machine with an unchanged tree (e.g. two
`ccnbench bench --config ci-quick` runs back to back). For every paired ratio (each format vs
its reference, merged vs kept), counts how often run b's point value falls inside run a's 95 %
interval, and the other way round. Calibrated intervals give about 83 % (the second run's value
is itself an estimate, not the truth); a much lower share means the intervals are too narrow.
Exits 1 below --min (default 0.78).
"""

from __future__ import annotations

import argparse
import sys

from ccnbench import shard
from ccnbench.answers import derived


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories or results.json files, in pairs")
    parser.add_argument("--min", type=float, default=0.78, help="fail below this share (default 0.78)")
    parser.add_argument("--misses", action="store_true", help="list the ratios that fell outside")
    args = parser.parse_args(argv)
    if len(args.runs) % 2:
        parser.error("give the runs in pairs (a b [a b ...])")
    inside = compared = 0
    for a_path, b_path in zip(args.runs[::2], args.runs[1::2]):
        (a,), (b,) = shard.load_runs([a_path]), shard.load_runs([b_path])
        for first, second, name in ((a, b, f"{b_path} in {a_path}"), (b, a, f"{a_path} in {b_path}")):
            i, n, misses = derived.cross_coverage(first, second)
            inside, compared = inside + i, compared + n
            print(f"{name}: {i}/{n} inside ({i / n:.1%})" if n else f"{name}: nothing to compare")
            if args.misses:
                print("\n".join(f"  {m}" for m in misses))
    if not compared:
        print("no paired ratios to compare")
        return 1
    share = inside / compared
    print(f"A-A cross-coverage: {inside}/{compared} = {share:.1%} (needs >= {args.min:.0%})")
    return 0 if share >= args.min else 1


if __name__ == "__main__":
    sys.exit(main())
