"""Derived numbers every view shares: speed-ups against the reference target and merged vs kept."""

from __future__ import annotations

from collections.abc import Iterable

from ccnbench.results import CaseKey, CaseResult, RunResult


def reference_target(target: str) -> str:
    """Eager PyTorch on the same kind of device: what a user would run without ccnbench."""
    from ccnbench.backends import Target

    return "torch:cuda" if Target.parse(target).is_cuda else "torch:cpu"


def index(cases: Iterable[CaseResult]) -> dict[CaseKey, CaseResult]:
    return {c.key: c for c in cases}


def median_ms(case: CaseResult | None) -> float | None:
    if case is None or case.status != "ok" or case.latency is None:
        return None
    return case.latency.median


def speedup_vs_reference(cases: dict[CaseKey, CaseResult], case: CaseResult) -> float | None:
    """Reference median / this median, same model, layout, precision and batch; >1 is faster."""
    ref_key = CaseKey(**{**case.key.__dict__, "target": reference_target(case.key.target)})
    ref, own = median_ms(cases.get(ref_key)), median_ms(case)
    return ref / own if ref and own else None


def merged_speedup(cases: dict[CaseKey, CaseResult], case: CaseResult) -> float | None:
    """For a merged case: kept median / merged median on the same target; >1 means merging pays."""
    if case.key.layout != "merged":
        return None
    kept = cases.get(CaseKey(**{**case.key.__dict__, "layout": "kept"}))
    k, m = median_ms(kept), median_ms(case)
    return k / m if k and m else None


def all_cases(runs: Iterable[RunResult]) -> list[CaseResult]:
    """Cases of several runs (a CPU and a GPU machine, say); a later run wins on a repeated key."""
    merged: dict[CaseKey, CaseResult] = {}
    for run in runs:
        merged.update(index(run.cases))
    return list(merged.values())
