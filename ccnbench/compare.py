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

Where both runs have several contest processes, the change is judged by a two-sample t-test on
the processes themselves (each process's paired log ratio to its reference is one unit), which
is what stays honest at 2-4 processes: its variance is the larger of the case's own and the one
pooled over the cases of its target at its batch size, so a case whose processes disagree (a
process "mode") widens its own test instead of counting as a regression.

Speed is judged only **like with like**: ratios between runtimes differ by CPU, so when the two
runs' machine or software fingerprints differ (or one run has none: an unknown machine), speed
changes are reported as "not judged" and only agreement failures, crashes and missing cases
count. ``force_speed`` judges them anyway, for a base known to be from this machine (the CI gate
measures its base in the same job).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ccnbench import environment, results, shard, stats
from ccnbench.analysis import reference_target
from ccnbench.environment import Environment
from ccnbench.errors import UsageError
from ccnbench.results import CaseKey, RunResult
from ccnbench.timing import LatencyStats

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
    processes: tuple[float, ...] = ()  # per contest process: its paired log ratio to the reference
    pool: str = ""  # rows whose process variances are pooled: one target at one batch size


@dataclass(frozen=True)
class Side:
    """One side of a comparison as read from disk: its kind, rows and (for a run) environment."""

    kind: str
    rows: dict[str, Row]
    environment: Environment | None = None
    machine: dict[str, Any] | None = None  # a pytest-benchmark file's machine, from its machine_info


@dataclass(frozen=True)
class Change:
    key: str
    # regression, improvement, unchanged, not judged (speed across machines), new failure,
    # new crash, fixed, only in base, only in new, reference
    kind: str
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
    unlike: tuple[str, ...] = ()  # why the runs are not like with like (machine, software)
    speed_judged: bool = True

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
            "speed_judged": self.speed_judged,
            "unlike": list(self.unlike),
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
        if self.unlike:
            verdict = (
                "speed judged anyway (forced)"
                if self.speed_judged
                else "speed changes are **not judged** (different machines); agreement, crashes and "
                "missing cases are"
            )
            lines += [f"Not like with like: {'; '.join(self.unlike)}. {verdict}.", ""]
        shown = [c for c in self.changes if c.kind not in ("unchanged", "reference")]
        order = [
            "new crash",
            "new failure",
            "regression",
            "only in base",
            "only in new",
            "fixed",
            "improvement",
            "not judged",
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
    side = load_side(path)
    return side.kind, side.rows


def load_side(path: Path | str) -> Side:
    """``load_rows`` plus the run's environment (None for a pytest-benchmark file)."""
    path = Path(path)
    if path.is_dir():  # a run directory, or the shards of one sweep: read as one run
        runs = shard.load_runs([path])
        if len(runs) != 1:
            raise UsageError(f"{path} holds {len(runs)} different runs; give one run (or the shards of one)")
        return Side("ccnbench", rows_from_run(runs[0]), runs[0].environment)
    file = path
    data = results.read_json(file)
    if isinstance(data, dict) and "benchmarks" in data and "machine_info" in data:
        return Side("pytest-benchmark", _rows_from_pytest_benchmark(data), machine=_benchmark_machine(data))
    run = RunResult.from_dict(data, source=str(file))
    return Side("ccnbench", rows_from_run(run), run.environment)


def machine_differences(base: Side, new: Side) -> list[str]:
    """Why the two sides' speeds are not comparable ([] when like with like); pytest-benchmark
    files are judged by their own ``machine_info``."""
    if base.environment is not None and new.environment is not None:
        return environment.differences(base.environment, new.environment)
    if base.kind == new.kind == "pytest-benchmark":
        reasons = []
        for side, machine in (("base", base.machine), ("new", new.machine)):
            if not machine:
                reasons.append(f"{side} file: unknown machine (no CPU in its machine_info)")
        if not reasons and base.machine and new.machine:
            for name in base.machine.keys() | new.machine.keys():
                a, b = base.machine.get(name), new.machine.get(name)
                if a != b:
                    reasons.append(f"{name}: {a} -> {b}")
        return sorted(reasons)
    return []


def _benchmark_machine(data: dict[str, Any]) -> dict[str, Any] | None:
    """The fields of pytest-benchmark's machine_info (py-cpuinfo) that ``environment.differences``
    compares for a run; None without a CPU description."""
    info = data.get("machine_info") or {}
    cpu = info.get("cpu") or {}
    if not cpu.get("brand_raw"):
        return None
    flags = set(cpu.get("flags") or ())
    return {
        "cpu": cpu.get("brand_raw"),
        "cpu_vendor": cpu.get("vendor_id_raw"),
        "cpu_family": cpu.get("family"),
        "cpu_model_number": cpu.get("model"),
        "cpu_stepping": cpu.get("stepping"),
        "cpu_flags": [f for f in environment.ISA_FLAGS if f in flags],
        "cpu_cores_logical": cpu.get("count"),
        "python": info.get("python_version"),
    }


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
        paired = ratio is not None and ratio.computable and ratio.scope != "unpaired"
        ratio = ratio if paired else None  # paired ratios only: one contest of one run
        per_process = process_log_ratios(case.latency, ref_case.latency) if paired else ()
        rows[str(case.key)] = Row(
            str(case.key),
            case.key.target,
            case.status,
            case.agreement.passed if case.agreement else None,
            metrics,
            None if ref == case.key else str(ref),
            ratio,
            per_process,
            f"{case.key.target}/b{case.key.batch}",
        )
    return rows


def process_log_ratios(num: LatencyStats | None, den: LatencyStats | None) -> tuple[float, ...]:
    """Per contest process: the median over its rounds of the paired log ratios
    (``stats.paired_logs``). The processes are the gate's units."""
    return tuple(statistics.median(v) for _, v in sorted(stats.paired_logs(num, den).items()))


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
    unlike: tuple[str, ...] | list[str] = (),
    force_speed: bool = False,
) -> Comparison:
    """Judge ``new`` against ``base``. ``unlike``: why the runs are not like with like (see
    ``machine_differences``); speed is then not judged unless ``force_speed``."""
    if metric not in METRICS:
        raise UsageError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    if by not in GROUPINGS:
        raise UsageError(f"--by must be one of {', '.join(GROUPINGS)}, got {by!r}")
    changes: list[Change] = []
    notes: list[str] = []
    ratios: dict[str, list[float]] = {}
    judge_speed = force_speed or not unlike
    pooled = _pooled_variances(base, new) if relative and metric == "p50" else {}
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
        paired = relative and metric == "p50"
        by_process = paired and len(b.processes) + len(n.processes) >= 3 and b.processes and n.processes
        if by_process:
            bv, nv = math.exp(statistics.fmean(b.processes)), math.exp(statistics.fmean(n.processes))
        else:
            bv, nv = _value(b, base, metric, relative), _value(n, new, metric, relative)
        if bv is None or nv is None:
            notes.append(f"{key}: no {metric}{' or no reference case' if relative else ''}; not compared")
            continue
        slowdown = (bv / nv - 1) if metric == "throughput" else (nv / bv - 1)
        ratios.setdefault(n.target, []).append(1 + slowdown)
        if by == "case":
            judged = (
                _judge_processes(slowdown, threshold, b.processes, n.processes, pooled.get(n.pool))
                if by_process
                else None
            )
            if judged is None:
                intervals = (b.ratio, n.ratio) if paired else (None, None)
                judged = _judge(slowdown, threshold, (bv, nv), *intervals)
            kind, detail = _unjudged(*judged, judge_speed)
            changes.append(Change(key, kind, n.target, bv, nv, slowdown, detail))
    if by == "target":
        for target, values in sorted(ratios.items()):
            gm = math.exp(sum(math.log(v) for v in values) / len(values)) - 1
            kind, detail = _unjudged(
                _kind(gm, threshold), f"geometric mean of {len(values)} cases", judge_speed
            )
            changes.append(Change(f"{target} (all cases)", kind, target, slowdown=gm, detail=detail))
    if unlike and not judge_speed:
        notes.append("speed not judged: the runs come from different machines or software; "
                     "--force-speed judges it anyway")  # fmt: skip
    elif unlike:
        notes.append("speed judged although the runs are not like with like (--force-speed)")
    return Comparison(
        metric, threshold, relative, by, tuple(changes), tuple(notes), fail_on_missing,
        tuple(unlike), judge_speed,
    )  # fmt: skip


def _unjudged(kind: str, detail: str, judge_speed: bool) -> tuple[str, str]:
    """Across machines a speed change is reported, not judged (nor is the lack of one)."""
    if judge_speed or kind not in ("regression", "improvement", "unchanged"):
        return kind, detail
    return "not judged", f"{kind} across machines: {detail}" if detail else f"{kind} across machines"


def _sum_squares(values: tuple[float, ...]) -> float:
    mean = statistics.fmean(values)
    return sum((v - mean) ** 2 for v in values)


def _pooled_variances(base: Mapping[str, Row], new: Mapping[str, Row]) -> dict[str, tuple[float, int]]:
    """Per pool (a target at a batch size: their noise differs), the between-process variance of
    the per-process log ratios, pooled over its cases and both runs (within each run, so a real
    change does not inflate it), with its degrees of freedom."""
    sums: dict[str, list[float]] = {}
    for rows in (base, new):
        for row in rows.values():
            if len(row.processes) >= 2:
                acc = sums.setdefault(row.pool, [0.0, 0])
                acc[0] += _sum_squares(row.processes)
                acc[1] += len(row.processes) - 1
    return {pool: (total / df, int(df)) for pool, (total, df) in sums.items()}


def _judge_processes(
    slowdown: float,
    threshold: float,
    base: tuple[float, ...],
    new: tuple[float, ...],
    pooled: tuple[float, int] | None,
) -> tuple[str, str] | None:
    """A change beyond the threshold counts only if a two-sample t-test on the processes resolves
    it (95 %, two-sided). The variance is the larger of the case's own (pooled over its two runs)
    and its pool's (``_pooled_variances``); None when neither exists (one process a side, alone)."""
    kind = _kind(slowdown, threshold)
    df_own = len(base) + len(new) - 2
    options = [((_sum_squares(base) + _sum_squares(new)) / df_own, df_own)] if df_own > 0 else []
    options += [pooled] if pooled else []
    if not options:
        return None
    from scipy.stats import t as student

    variance, df = max(options)
    shift = statistics.fmean(new) - statistics.fmean(base)
    half = float(student.ppf(0.975, df)) * math.sqrt(variance * (1 / len(base) + 1 / len(new)))
    detail = (
        f"{math.exp(statistics.fmean(base)):.3f} -> {math.exp(statistics.fmean(new)):.3f}, "
        f"{math.expm1(shift):+.1%} [{math.expm1(shift - half):+.1%}, {math.expm1(shift + half):+.1%}] "
        f"({len(base)}+{len(new)} processes)"
    )
    if kind != "unchanged" and abs(shift) <= half:
        return "unchanged", f"{detail} (beyond the threshold, within the noise)"
    return kind, detail


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
