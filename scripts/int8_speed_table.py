"""The int8 speed run (scripts/int8_speed.toml) as a table: int8 over fp32, paired, with agreement.

One row per model, batch, target, layout and int8 precision: the fp32 and int8 fastest calls, the
paired ratio int8 / fp32 with its 95 % interval (the two share a contest), the int8 case's verdict
and worst relative RMS error on the evaluation set, the layers it ran in int8, and the file sizes.

Usage: PYTHONPATH=. python scripts/int8_speed_table.py results/int8-evidence/speed > results/int8-evidence/speed.md
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from ccnbench import results
from ccnbench.answers import stats


def _interval(i: stats.Interval | None) -> str:
    if i is None:
        return "-"
    if not i.computable:
        return f"{i.value:.2f}x ({i.scope})"
    return f"{i.value:.2f}x [{i.low:.2f}, {i.high:.2f}]"


def _ms(case: results.CaseResult | None) -> str:
    return f"{case.latency.fastest:.3f}" if case and case.latency else "-"


def _mib(case: results.CaseResult | None) -> str:
    size = (case.artifact or {}).get("size_bytes") if case else None
    return f"{size / 2**20:.1f}" if size else "-"


def main() -> None:
    run = results.load(Path(sys.argv[1]))
    cases = {c.key: c for c in run.cases}
    print(
        "| model | batch | target | layout | precision | fp32 ms | int8 ms | int8 / fp32 [95 %] | verdict | rel RMS | ran in int8 | MiB int8 (fp32) |"
    )
    print("|---|---:|---|---|---|---:|---:|---:|---|---:|---|---:|")
    for key, case in sorted(
        cases.items(), key=lambda kv: (kv[0].model, kv[0].batch, kv[0].target, kv[0].layout, kv[0].precision)
    ):
        if not key.precision.startswith("int8"):
            continue
        fp32 = cases.get(replace(key, precision="fp32", quantization=""))
        rel = max((o.rel_rms or 0.0 for o in case.agreement.outputs), default=0.0) if case.agreement else None
        layers = ", ".join(case.details.get("int8_layers", [])) or case.message[:60]
        print(
            f"| {key.model} | {key.batch} | {key.target} | {key.layout} | {key.precision} | {_ms(fp32)} | {_ms(case)} | "
            f"{_interval(stats.pair(case, fp32))} | {case.verdict} | {'-' if rel is None else f'{rel:.3f}'} | "
            f"{layers} | {_mib(case)} ({_mib(fp32)}) |"
        )


if __name__ == "__main__":
    main()
