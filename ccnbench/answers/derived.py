"""Derived numbers every view shares: which case is a case's reference, speed-ups against it
and merged vs kept, and how a case's latency figures are printed.

The reference of a case (:func:`reference_key`) is the same case on eager PyTorch on the same kind
of device (``Target.reference``); every view finds it here. Ratios come from ``ccnbench.answers.stats.pair``,
the one pairing rule: cases timed in one contest of one run give paired speed-ups with 95 %
intervals, so every view shows the same number; other cases get the ratio of their fastest
calls, marked unpaired, without an interval.

A latency figure is printed as what it is (:func:`fastest_text`, :func:`percentile_text`): a
format's own speed, the fastest call with its 95 % interval over processes, which repeats between
runs on one machine; or a figure under the host's load, a percentile with its range over the run's
processes, which moves with that load between runs far more than the fastest call does
(docs/measurement.md gives the rule and its evidence).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import replace

from ccnbench.answers.stats import NOISY_CV, UNPAIRED, Interval, fastest_interval, pair
from ccnbench.backends.base import Target
from ccnbench.measure.samples import LatencyStats
from ccnbench.results import CaseKey, CaseResult, RunResult


def reference_key(key: CaseKey) -> CaseKey:
    """The case a case's speed-up is measured against: the same model, layout, precision, batch
    and memory format on eager PyTorch on the same kind of device (``Target.reference``). A
    reference case is its own reference."""
    return replace(key, target=str(Target.parse(key.target).reference))


def is_reference(key: CaseKey) -> bool:
    return reference_key(key) == key


def index(cases: Iterable[CaseResult]) -> dict[CaseKey, CaseResult]:
    return {c.key: c for c in cases}


def median_ms(case: CaseResult | None) -> float | None:
    if case is None or case.status != "ok" or case.latency is None:
        return None
    return case.latency.median


def significant(value: float, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits in plain notation (``1.17``, ``0.184``, ``45.3``):
    how interval bounds and ranges print, short enough for a terminal table."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def fastest_bounds(latency: LatencyStats) -> str | None:
    """The fastest call's 95 % interval over processes as printed, ``[0.184, 0.203]``; None below
    two calm processes or where it is not computable (never a made-up one)."""
    interval = fastest_interval(latency)
    if interval is None or not interval.computable:
        return None
    return f"[{significant(interval.low)}, {significant(interval.high)}]"


def fastest_text(latency: LatencyStats) -> str:
    """A format's own speed as every view prints it (ms): ``0.193 [0.184, 0.203]``, the fastest
    call with its 95 % interval over processes (``stats.fastest_interval``), or the value alone."""
    bounds = fastest_bounds(latency)
    return f"{latency.fastest:.3f}" + (f" {bounds}" if bounds else "")


def spread(latency: LatencyStats, q: float) -> str | None:
    """The range over the run's processes of their ``q``-th percentile as printed, ``0.210-0.228``
    (``LatencyStats.percentile_range``); None with one process or without blocks."""
    bounds = latency.percentile_range(q)
    return None if bounds is None else f"{significant(bounds[0])}-{significant(bounds[1])}"


def percentile_text(latency: LatencyStats, q: float) -> str:
    """A figure under the host's load as every view prints it (ms): ``0.219 (0.210-0.228)``, the
    ``q``-th percentile of all the samples with its range over processes (``spread``), or the
    value alone."""
    found = spread(latency, q)
    return f"{latency.percentile(q):.3f}" + (f" ({found})" if found else "")


def speedup_interval(cases: dict[CaseKey, CaseResult], case: CaseResult) -> Interval | None:
    """Reference latency / this latency (paired within their contest, else unpaired); >1 is faster."""
    if is_reference(case.key):
        return None
    return pair(cases.get(reference_key(case.key)), case)


def merged_interval(cases: dict[CaseKey, CaseResult], case: CaseResult) -> Interval | None:
    """For a merged case: kept latency / merged latency on the same target (paired, else unpaired)."""
    if case.key.layout != "merged":
        return None
    return pair(cases.get(replace(case.key, layout="kept")), case)


def speedup_vs_reference(cases: dict[CaseKey, CaseResult], case: CaseResult) -> float | None:
    """The point of ``speedup_interval``: the reference's fastest call over this one's (paired by
    process where they shared a contest); >1 is faster."""
    ratio = speedup_interval(cases, case)
    return ratio.value if ratio else None


def merged_speedup(cases: dict[CaseKey, CaseResult], case: CaseResult) -> float | None:
    """The point of ``merged_interval``: kept over merged fastest calls on the same target (paired
    where they shared a contest); >1 means merging pays."""
    ratio = merged_interval(cases, case)
    return ratio.value if ratio else None


def reproducibility(first: RunResult, second: RunResult) -> dict[str, float | int]:
    """How well two runs of one sweep agree: the A-A figures the regression gate is sized from.

    ``reference_within_10``: share of cases whose speed-up vs the reference agrees within
    +-10 %; ``merged_within_5``: share of merged cases whose merged/kept speed-up agrees within
    +-5 %; ``median_within_10``: share of raw medians within +-10 %; plus the worst ratios.
    """
    a, b = index(first.cases), index(second.cases)
    ref, merged, raw = [], [], []
    for key, case in a.items():
        other = b.get(key)
        if other is None:
            continue
        pairs = (
            (speedup_vs_reference(a, case), speedup_vs_reference(b, other), ref),
            (merged_speedup(a, case), merged_speedup(b, other), merged),
            (median_ms(case), median_ms(other), raw),
        )
        for x, y, into in pairs:
            if x and y and not (into is ref and is_reference(key)):
                into.append(y / x)

    def share(values: list[float], within: float) -> float:
        return sum(abs(v - 1) <= within for v in values) / len(values) if values else float("nan")

    def worst(values: list[float]) -> float:
        return max((max(v, 1 / v) for v in values), default=float("nan"))

    return {
        "reference_cases": len(ref),
        "reference_within_10": share(ref, 0.10),
        "reference_worst": worst(ref),
        "merged_cases": len(merged),
        "merged_within_5": share(merged, 0.05),
        "merged_worst": worst(merged),
        "median_within_10": share(raw, 0.10),
    }


def cross_coverage(first: RunResult, second: RunResult) -> tuple[int, int, list[str]]:
    """A-A calibration: how often ``second``'s point value of a paired ratio (vs the reference, and
    merged vs kept) falls inside ``first``'s 95 % interval for the same ratio. Returns (inside,
    compared, misses). Calibrated intervals put it near 83 % (two noisy estimates, not a true value
    and one estimate); far lower means the intervals are too narrow."""
    a, b = index(first.cases), index(second.cases)
    inside, compared, misses = 0, 0, []
    for key, case in a.items():
        other = b.get(key)
        if other is None:
            continue
        for name, view in (("vs reference", speedup_interval), ("merged vs kept", merged_interval)):
            mine, theirs = view(a, case), view(b, other)
            if mine is None or theirs is None or mine.scope == UNPAIRED or theirs.scope == UNPAIRED:
                continue
            compared += 1
            if mine.contains(theirs.value):
                inside += 1
            else:
                misses.append(f"{key} {name}: {theirs.value:.3f} outside {mine.format(3)}")
    return inside, compared, misses


def all_cases(runs: Iterable[RunResult]) -> list[CaseResult]:
    """Cases of several runs (a CPU and a GPU machine, say); a later run wins on a repeated key.

    Each case keeps which run it came from (``CaseResult.run``), so that cases of two runs never
    pair, even where older files gave their contests the same id.
    """
    merged: dict[CaseKey, CaseResult] = {}
    for run in runs:
        merged.update({c.key: replace(c, run=run.tag) for c in run.cases})
    return list(merged.values())


# A run whose medians sat at most this far above the fastest calls, on average, was timed on a
# quiet enough machine. Fifteen `make bench` runs of one day on a 2-core AMD EPYC (today's sweep
# and its earlier, 4-6 round settings), with the answers recomputed by today's rule: the eleven
# at 1.07-1.15 left 0-2 answers inconclusive (none in six of them), the four at 1.18-1.23 left 1-4.
BUSY_LOAD = 1.15


def machine_load(cases: Iterable[CaseResult]) -> float | None:
    """How much other work slowed the timing down: the geometric mean, over every contest case
    and process, of the median of its blocks' medians over its fastest call (1.0: every call as
    fast as the fastest). None without contest blocks."""
    logs = []
    for case in cases:
        if case.status != "ok" or case.latency is None:
            continue
        by_process: dict[int, list[float]] = {}
        for block in case.latency.blocks:
            by_process.setdefault(block.process, []).append(block.median)
        fastest = case.latency.fastest_by_process()
        logs += [math.log(statistics.median(m) / fastest[p]) for p, m in by_process.items() if fastest[p] > 0]
    return math.exp(statistics.fmean(logs)) if logs else None


def load_note(cases: Iterable[CaseResult]) -> str | None:
    """A warning when the machine was busy while ``cases`` ran (``machine_load`` above ``BUSY_LOAD``)."""
    load = machine_load(cases)
    if load is None or load <= BUSY_LOAD:
        return None
    return (
        f"the machine was busy while these ran: medians were {load:.2f}x the fastest calls (quiet: up to "
        f"{BUSY_LOAD:.2f}x), so answers within the margin may not repeat; rerun on a quieter machine, or "
        "raise `repeats` under [protocol]"
    )


def noise_warnings(cases: Iterable[CaseResult], resolve: float = 0.10) -> list[str]:
    """Cases whose run was too noisy to resolve what the report says about them: round medians
    varying by more than NOISY_CV, or a speed-up whose interval is wider than +-``resolve``."""
    cases = list(cases)
    by_key = index(cases)
    lines = []
    for case in cases:
        if case.status != "ok" or case.latency is None:
            continue
        wide = [
            f"{name} {i.format()}"
            for name, i in (
                ("vs eager", speedup_interval(by_key, case)),
                ("merged vs kept", merged_interval(by_key, case)),
            )
            if i is not None and i.scope != UNPAIRED and i.relative_half_width > resolve
        ]
        noise = case.latency.noise
        if noise is not None and noise > NOISY_CV:
            wide.insert(0, f"round medians vary by {noise:.0%} (CV)")
        if wide:
            lines.append(f"{case.key}: " + "; ".join(wide))
    return lines
