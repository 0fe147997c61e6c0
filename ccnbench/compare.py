"""`ccnbench compare BASE NEW`: the regression gate.

Cases are matched by key. The gate fails on a new agreement failure, a new crash or timeout, or
a latency regression beyond the threshold. Latency is compared *relative to the same run's
reference target* by default (eager PyTorch on the same device, same model, layout, precision
and batch), so a CI machine that is uniformly faster or slower than the one that recorded the
baseline does not move the gate; ``absolute=True`` compares raw times. pytest-benchmark JSON
files are read too. With ``by="target"`` the gate judges each target by the geometric mean of
its cases.

When both runs come from contests (schema 2), a case's ratio to its reference is the *paired*
ratio (same process, same round) with its 95 % interval, and a change only counts when it is
beyond the threshold *and* outside the noise of both runs: the two intervals do not overlap.
A schema-1 run has no intervals; its point value is then compared with the other's interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ccnbench import results, stats
from ccnbench.analysis import reference_target
from ccnbench.errors import UsageError
from ccnbench.results import CaseKey, RunResult

METRICS = ("p50", "p99", "throughput")
GROUPINGS = ("case", "target")


@dataclass(frozen=True)
class Row:
    """One comparable measurement: a case of a run or one pytest-benchmark test."""

    key: str
    target: str
    status: str
    passed: bool | None
    metrics: Mapping[str, float]
    reference_key: str | None = None
    ratio: stats.Interval | None = None  # latency / reference latency, paired within its contest


@dataclass(frozen=True)
class Change:
    key: str
    kind: str  # regression, improvement, unchanged, new failure, new crash, fixed, only in base, only in new, reference
    target: str = ""
    base: float | None = None
    new: float | None = None
    slowdown: float | None = None  # new/base - 1 for latency (positive is worse)
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Comparison:
    metric: str
    threshold: float
    relative: bool
    by: str
    changes: tuple[Change, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)
    fail_on_missing: bool = False

    @property
    def failures(self) -> list[Change]:
        bad = {"regression", "new failure", "new crash"} | (
            {"only in base"} if self.fail_on_missing else set()
        )
        return [c for c in self.changes if c.kind in bad]

    @property
    def failed(self) -> bool:
        return bool(self.failures)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for c in self.changes:
            counts[c.kind] = counts.get(c.kind, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "failed": self.failed,
            "metric": self.metric,
            "threshold": self.threshold,
            "relative": self.relative,
            "by": self.by,
            "counts": self.counts(),
            "notes": list(self.notes),
            "changes": [c.to_dict() for c in self.changes],
        }

    def markdown(self) -> str:
        mode = "relative to eager PyTorch on the same device" if self.relative else "absolute"
        lines = [
            f"## ccnbench compare: {'FAIL' if self.failed else 'pass'}",
            "",
            f"Metric {self.metric} ({mode}), threshold {self.threshold:.0%}, judged per {self.by}.",
            "",
        ]
        shown = [c for c in self.changes if c.kind not in ("unchanged", "reference")]
        order = [
            "new crash",
            "new failure",
            "regression",
            "only in base",
            "only in new",
            "fixed",
            "improvement",
        ]
        shown.sort(key=lambda c: (order.index(c.kind) if c.kind in order else len(order), c.key))
        if shown:
            value = "ratio to reference" if self.relative else self.metric
            lines += [
                f"| case | change | base {value} | new {value} | slowdown | detail |",
                "|---|---|---:|---:|---:|---|",
            ]
            for c in shown:
                lines.append(
                    f"| {c.key} | {c.kind} | {_fmt(c.base)} | {_fmt(c.new)} | "
                    f"{'' if c.slowdown is None else f'{c.slowdown:+.1%}'} | {c.detail} |"
                )
            lines.append("")
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(self.counts().items()))
        lines.append(f"{counts or 'nothing to compare'}.")
        lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def parse_threshold(text: str | float) -> float:
    """'10%' or '0.1' -> 0.1."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        raw = text.strip()
        try:
            value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
        except ValueError as exc:
            raise UsageError(
                f"--threshold {text!r}: expected a percentage like 10% or a fraction like 0.1"
            ) from exc
    if not 0 <= value < 100 or math.isnan(value):
        raise UsageError(f"--threshold must be a non-negative percentage, got {text!r}")
    return value


def load_rows(path: Path | str) -> tuple[str, dict[str, Row]]:
    """A ccnbench run (directory or results.json) or a pytest-benchmark JSON file."""
    path = Path(path)
    if path.is_dir():  # a run directory, or the shards of one sweep: read as one run
        runs = results.load_runs([path])
        if len(runs) != 1:
            raise UsageError(f"{path} holds {len(runs)} different runs; give one run (or the shards of one)")
        return "ccnbench", rows_from_run(runs[0])
    file = path
    data = results.read_json(file)
    if isinstance(data, dict) and "benchmarks" in data and "machine_info" in data:
        return "pytest-benchmark", _rows_from_pytest_benchmark(data)
    return "ccnbench", rows_from_run(RunResult.from_dict(data, source=str(file)))


def rows_from_run(run: RunResult) -> dict[str, Row]:
    rows = {}
    cases = {c.key: c for c in run.cases}
    for case in run.cases:
        metrics = {}
        if case.status == "ok" and case.latency is not None:
            metrics = {
                "p50": case.latency.median,
                "p99": case.latency.p99,
                "throughput": case.latency.throughput,
            }
        ref = CaseKey(**{**case.key.__dict__, "target": reference_target(case.key.target)})
        ref_case = cases.get(ref)
        ratio = stats.pair(case, ref_case) if ref != case.key else None
        ratio = ratio if ratio is not None and ratio.computable else None  # paired ratios only
        rows[str(case.key)] = Row(
            str(case.key),
            case.key.target,
            case.status,
            case.agreement.passed if case.agreement else None,
            metrics,
            None if ref == case.key else str(ref),
            ratio,
        )
    return rows


def _rows_from_pytest_benchmark(data: dict[str, Any]) -> dict[str, Row]:
    rows = {}
    for bench in data.get("benchmarks", []):
        stats, info = bench.get("stats", {}), bench.get("extra_info", {})
        batch = int(info.get("batch", 1))
        metrics = (
            {"p50": stats["median"] * 1e3, "throughput": batch / stats["median"]} if "median" in stats else {}
        )
        if {"model", "layout", "target"} <= set(info):
            key = CaseKey(
                info["model"], "", info["layout"], info["target"], info.get("precision", "fp32"), batch
            )
            ref = CaseKey(**{**key.__dict__, "target": reference_target(key.target)})
            rows[str(key)] = Row(str(key), key.target, "ok", None, metrics, None if ref == key else str(ref))
        else:
            name = bench.get("fullname") or bench["name"]
            rows[name] = Row(name, "", "ok", None, metrics)
    return rows


def compare(
    base: Mapping[str, Row],
    new: Mapping[str, Row],
    metric: str = "p50",
    threshold: float = 0.10,
    relative: bool = True,
    by: str = "case",
    fail_on_missing: bool = False,
) -> Comparison:
    if metric not in METRICS:
        raise UsageError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    if by not in GROUPINGS:
        raise UsageError(f"--by must be one of {', '.join(GROUPINGS)}, got {by!r}")
    changes: list[Change] = []
    notes: list[str] = []
    ratios: dict[str, list[float]] = {}
    for key in sorted(set(base) | set(new)):
        b, n = base.get(key), new.get(key)
        if b is None or n is None:
            row = b or n
            assert row is not None
            if row.status != "unavailable":
                changes.append(Change(key, "only in base" if n is None else "only in new", row.target))
            continue
        change = _status_change(b, n)
        if change:
            changes.append(change)
            continue
        if n.status != "ok" or b.status != "ok":
            continue
        if relative and n.reference_key is None and b.reference_key is None:
            changes.append(Change(key, "reference", n.target, detail="the reference target itself"))
            continue
        bv, nv = _value(b, base, metric, relative), _value(n, new, metric, relative)
        if bv is None or nv is None:
            notes.append(f"{key}: no {metric}{' or no reference case' if relative else ''}; not compared")
            continue
        slowdown = (bv / nv - 1) if metric == "throughput" else (nv / bv - 1)
        ratios.setdefault(n.target, []).append(1 + slowdown)
        if by == "case":
            paired = relative and metric == "p50"
            intervals = (b.ratio, n.ratio) if paired else (None, None)
            kind, detail = _judge(slowdown, threshold, (bv, nv), *intervals)
            changes.append(Change(key, kind, n.target, bv, nv, slowdown, detail))
    if by == "target":
        for target, values in sorted(ratios.items()):
            gm = math.exp(sum(math.log(v) for v in values) / len(values)) - 1
            detail = f"geometric mean of {len(values)} cases"
            changes.append(
                Change(f"{target} (all cases)", _kind(gm, threshold), target, slowdown=gm, detail=detail)
            )
    return Comparison(metric, threshold, relative, by, tuple(changes), tuple(notes), fail_on_missing)


def _status_change(b: Row, n: Row) -> Change | None:
    if n.status in ("failed", "timeout") and b.status not in ("failed", "timeout"):
        return Change(n.key, "new crash", n.target, detail=f"{b.status} -> {n.status}")
    if b.status in ("failed", "timeout") and n.status == "ok":
        return Change(n.key, "fixed", n.target, detail=f"{b.status} -> ok")
    if n.passed is False and b.passed is not False:
        return Change(n.key, "new failure", n.target, detail="agreement with the oracle now fails")
    if b.passed is False and n.passed is True:
        return Change(n.key, "fixed", n.target, detail="agreement passes again")
    return None


def _value(row: Row, rows: Mapping[str, Row], metric: str, relative: bool) -> float | None:
    own = row.metrics.get(metric)
    if own is None or not relative:
        return own
    if metric == "p50" and row.ratio is not None:
        return row.ratio.value
    ref = rows.get(row.reference_key or "")
    base = ref.metrics.get(metric) if ref and ref.status == "ok" else None
    return own / base if base else None


def _judge(
    slowdown: float,
    threshold: float,
    values: tuple[float, float],
    base: stats.Interval | None,
    new: stats.Interval | None,
) -> tuple[str, str]:
    """A change beyond the threshold counts only if it is also outside both runs' noise: the
    two intervals do not overlap (a run without one contributes its point value)."""
    kind = _kind(slowdown, threshold)
    if base is None and new is None:
        return kind, ""
    detail = " -> ".join(i.format(3) if i else f"{v:.3f}" for i, v in zip((base, new), values))
    b_low, b_high = (base.low, base.high) if base else (values[0], values[0])
    n_low, n_high = (new.low, new.high) if new else (values[1], values[1])
    if (kind == "regression" and n_low <= b_high) or (kind == "improvement" and n_high >= b_low):
        return "unchanged", f"{detail} (beyond the threshold, within the noise)"
    return kind, detail


def _kind(slowdown: float, threshold: float) -> str:
    if slowdown > threshold:
        return "regression"
    if slowdown < -threshold / (1 + threshold):  # symmetric in ratio: 1.1x slower <-> 1.1x faster
        return "improvement"
    return "unchanged"


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.3g}"
