"""`ccnbench compare BASE NEW`: the regression gate.

Cases are matched by key. The gate fails on a new agreement failure, a new crash or timeout, or
a latency regression beyond the threshold. Latency is compared *relative to the same run's
reference target* by default (eager PyTorch on the same device, same model, layout, precision
and batch), so a CI machine that is uniformly faster or slower than the one that recorded the
baseline does not move the gate; ``absolute=True`` compares raw times. pytest-benchmark JSON
files are read too. With ``by="target"`` the gate judges each target by the geometric mean of
its cases.

The metric says which figure is judged, and each is named for what it is (``METRICS``):
``fastest`` (the default) is a format's own speed, the fastest call, which repeats between runs
on one machine; ``p50``, ``p99`` and ``throughput`` (samples/s at the median) are what a caller
waits under the host's load, which moves them between runs far more (docs/measurement.md).
Relative ``p50``, ``p99`` and ``throughput`` are the case's figure over its reference's in the
same run, unpaired, without intervals.

With ``fastest``, when both runs come from contests (schema 2), a case's ratio to its reference
is the *paired* ratio (fastest call over fastest call in the same process, ``stats.pair``) with
its 95 % interval, and a change only counts when it is beyond the threshold *and* outside the
noise of both runs: the two intervals do not overlap. A case that does not pair has the ratio of
its fastest call to its reference's, unpaired. A schema-1 run has no intervals; its point value
is then compared with the other's interval.

Where both runs have several contest processes, the change is judged by a two-sample t-test on
the processes themselves (each calm process's log ratio of fastest calls to its reference is one
unit), which is what stays honest at 2-4 processes: its variance is the one pooled over the cases
of its target at its batch size, or the case's own where an F-test finds that larger, so a case
whose processes disagree (a process "mode") widens its own test instead of counting as a
regression, and two processes that happen to disagree a little do not hide a real change. A change
the fastest calls resolve must also show in the median calls (their ratio to the reference moved
the same way by at least half the threshold): a slower code path moves every call, while whether a
process met quiet moments on a shared host moves only its fastest.

Speed is judged only **like with like**: ratios between runtimes differ by CPU, so when the two
runs' machine or software fingerprints differ (or one run has none: an unknown machine), speed
changes are reported as "not judged" and only agreement failures, crashes and missing cases
count. ``force_speed`` judges them anyway, for a base known to be from this machine (the CI gate
measures its base in the same job). A run combined from shards measured on different machines (a
CI matrix whose runners differ: ``shard.mixed_machines``) is never like with like: its cases come
from several machines, so no base matches them all, and ``force_speed`` does not judge its speed.

The rows judged here, and whether two sides are like with like, come from ``ccnbench.answers.compare_sides``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ccnbench.answers import stats
from ccnbench.answers.compare_sides import Row
from ccnbench.errors import UsageError

#: What ``--metric`` takes, and what each one is: a format's own speed, or a figure under the host's load.
METRICS = {
    "fastest": "fastest call (own speed)",
    "p50": "median (under the host's load)",
    "p99": "p99 (under the host's load)",
    "throughput": "samples/s at the median (under the host's load)",
}
GROUPINGS = ("case", "target")


@dataclass(frozen=True)
class Change:
    key: str
    # regression, improvement, unchanged, not judged (speed across machines), new failure,
    # now vacuous (pass -> vacuous), new crash, fixed, only in base, only in new, reference
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
    refused: tuple[str, ...] = ()  # why no flag may judge speed: a side's shards from different machines

    @property
    def failures(self) -> list[Change]:
        bad = {"regression", "new failure", "now vacuous", "new crash"} | (
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
            "refused": list(self.refused),
            "notes": list(self.notes),
            "changes": [c.to_dict() for c in self.changes],
        }

    def markdown(self) -> str:
        lines = [
            f"## ccnbench compare: {'FAIL' if self.failed else 'pass'}",
            "",
            f"Metric {self.metric}: {describe_metric(self.metric, self.relative)}; threshold "
            f"{self.threshold:.0%}, judged per {self.by}.",
            "",
        ]
        for reason in self.refused:
            lines += [f"{reason}: speed not judged (not even with --force-speed); agreement, crashes and "
                      "missing cases are.", ""]  # fmt: skip
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
            "now vacuous",
            "regression",
            "only in base",
            "only in new",
            "fixed",
            "improvement",
            "not judged",
        ]
        shown.sort(key=lambda c: (order.index(c.kind) if c.kind in order else len(order), c.key))
        if shown:
            unit = "samples/s" if self.metric == "throughput" else f"{self.metric} ms"
            value = f"{self.metric} ratio to reference" if self.relative else unit
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


def describe_metric(metric: str, relative: bool) -> str:
    """What a comparison's figures are, as its header names them."""
    what = METRICS[metric]
    if not relative:
        return f"{what}, absolute"
    if metric == "fastest":
        return (f"{what}, ratio to eager PyTorch on the same device: paired by process with 95 % "
                "intervals where they ran in one contest, else unpaired")  # fmt: skip
    return f"{what}, ratio to eager PyTorch's in the same run, unpaired"


def parse_threshold(text: str | float, flag: str = "--threshold") -> float:
    """'10%' or '0.1' -> 0.1 (``flag`` names the option in the error)."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        raw = text.strip()
        try:
            value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
        except ValueError as exc:
            raise UsageError(
                f"{flag} {text!r}: expected a percentage like 10% or a fraction like 0.1"
            ) from exc
    if not 0 <= value < 100 or math.isnan(value):
        raise UsageError(f"{flag} must be a non-negative percentage, got {text!r}")
    return value


def compare(
    base: Mapping[str, Row],
    new: Mapping[str, Row],
    metric: str = "fastest",
    threshold: float = 0.10,
    relative: bool = True,
    by: str = "case",
    fail_on_missing: bool = False,
    unlike: tuple[str, ...] | list[str] = (),
    force_speed: bool = False,
) -> Comparison:
    """Judge ``new`` against ``base`` by ``metric`` (``METRICS``). ``unlike``: why the runs are not
    like with like (see ``machine_differences``); speed is then not judged unless ``force_speed``.
    A side combined from shards measured on different machines (its rows' ``speed_refused``) has
    its speed judged never, ``force_speed`` or not: its cases really come from several machines,
    so no base, whatever machine it was measured on, is like with like to all of them."""
    if metric not in METRICS:
        raise UsageError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    if by not in GROUPINGS:
        raise UsageError(f"--by must be one of {', '.join(GROUPINGS)}, got {by!r}")
    changes: list[Change] = []
    notes: list[str] = []
    ratios: dict[str, list[float]] = {}
    refused = _refused(base, new)
    judge_speed = not refused and (force_speed or not unlike)
    pooled = _pooled_variances(base, new) if relative and metric == "fastest" else {}
    for key in sorted(set(base) | set(new)):
        b, n = base.get(key), new.get(key)
        settled, change = _before_speed(key, b, n, relative)
        if not settled:
            assert b is not None and n is not None
            timed = _speed_change(key, b, n, (base, new), metric, threshold, relative, pooled)
            if isinstance(timed, str):
                notes.append(timed)
                continue
            assert timed.slowdown is not None
            ratios.setdefault(n.target, []).append(1 + timed.slowdown)
            kind, detail = _unjudged(timed.kind, timed.detail, judge_speed)
            change = replace(timed, kind=kind, detail=detail) if by == "case" else None
        if change is not None:
            changes.append(change)
    if by == "target":
        for target, values in sorted(ratios.items()):
            gm = math.exp(sum(math.log(v) for v in values) / len(values)) - 1
            kind, detail = _unjudged(
                _kind(gm, threshold), f"geometric mean of {len(values)} cases", judge_speed
            )
            changes.append(Change(f"{target} (all cases)", kind, target, slowdown=gm, detail=detail))
    if refused:  # the header says why; a note only where a flag asked otherwise
        if force_speed:
            notes.append("--force-speed ignored: a side's shards were measured on different machines")
    elif unlike and not judge_speed:
        notes.append("speed not judged: the runs come from different machines or software; "
                     "--force-speed judges it anyway")  # fmt: skip
    elif unlike:
        notes.append("speed judged although the runs are not like with like (--force-speed)")
    return Comparison(
        metric, threshold, relative, by, tuple(changes), tuple(notes), fail_on_missing,
        tuple(unlike), judge_speed, refused,
    )  # fmt: skip


def _refused(base: Mapping[str, Row], new: Mapping[str, Row]) -> tuple[str, ...]:
    """Why no flag may judge speed, one line per side whose rows say so ("NEW's shards were ...")."""
    return tuple(
        f"{side}'s {reason}"
        for side, rows in (("BASE", base), ("NEW", new))
        for reason in sorted({r.speed_refused for r in rows.values() if r.speed_refused})
    )


def _before_speed(key: str, b: Row | None, n: Row | None, relative: bool) -> tuple[bool, Change | None]:
    """Whether a case is settled before its speed is looked at (missing on one side, a status or
    agreement change, not timed, or the reference itself), and the change it records then."""
    if b is None or n is None:
        row = b or n
        assert row is not None
        if row.status == "unavailable":
            return True, None
        return True, Change(key, "only in base" if n is None else "only in new", row.target)
    change = _status_change(b, n)
    if change or n.status != "ok" or b.status != "ok":
        return True, change
    if relative and n.reference_key is None and b.reference_key is None:
        return True, Change(key, "reference", n.target, detail="the reference target itself")
    return False, None


def _speed_change(
    key: str,
    b: Row,
    n: Row,
    runs: tuple[Mapping[str, Row], Mapping[str, Row]],
    metric: str,
    threshold: float,
    relative: bool,
    pooled: Mapping[str, tuple[float, int]],
) -> Change | str:
    """A timed case's change in speed, judged as if on one machine, or a note saying why it was
    not compared. Paired ratios with processes on both sides are judged across processes
    (``_judge_processes``), others by their intervals (``_judge``)."""
    paired = relative and metric == "fastest"
    by_process = paired and len(b.processes) + len(n.processes) >= 3 and b.processes and n.processes
    if by_process:
        bv, nv = math.exp(statistics.fmean(b.processes)), math.exp(statistics.fmean(n.processes))
    else:
        bv, nv = _value(b, runs[0], metric, relative), _value(n, runs[1], metric, relative)
    if bv is None or nv is None:
        return f"{key}: no {metric}{' or no reference case' if relative else ''}; not compared"
    slowdown = (bv / nv - 1) if metric == "throughput" else (nv / bv - 1)
    judged = (
        _judge_processes(slowdown, threshold, b.processes, n.processes, pooled.get(n.pool))
        if by_process
        else None
    )
    if judged is None:
        intervals = (b.ratio, n.ratio) if paired else (None, None)
        judged = _judge(slowdown, threshold, (bv, nv), *intervals)
    if paired:  # the paired ratio is of fastest calls: the median calls must agree
        medians = _metric_ratio(b, runs[0], "p50"), _metric_ratio(n, runs[1], "p50")
        judged = _corroborated(judged, threshold, *medians)
    return Change(key, judged[0], n.target, bv, nv, slowdown, judged[1])


def _corroborated(
    judged: tuple[str, str], threshold: float, base: float | None, new: float | None
) -> tuple[str, str]:
    """A change the fastest calls resolve stands only if the median calls moved the same way by at
    least half the threshold. A slower code path moves every call; what moves only the fastest is
    how often a process met a quiet moment on the host (an unchanged tree's gate once failed on
    ONNX Runtime fastest calls of 1.2-1.4 ms in every base process and none under 1.7 ms in the
    head's, while both sides' medians were 2.0-2.1 ms)."""
    if judged[0] not in ("regression", "improvement") or base is None or new is None:
        return judged
    typical = new / base - 1
    if _kind(typical, threshold / 2) == judged[0]:
        return judged
    return "unchanged", f"{judged[1]} (fastest calls only: the median call's ratio moved {typical:+.1%})"


def _unjudged(kind: str, detail: str, judge_speed: bool) -> tuple[str, str]:
    """Across machines a speed change is reported, not judged (nor is the lack of one)."""
    if judge_speed or kind not in ("regression", "improvement", "unchanged"):
        return kind, detail
    return "not judged", f"{kind} across machines: {detail}" if detail else f"{kind} across machines"


def _pooled_variances(base: Mapping[str, Row], new: Mapping[str, Row]) -> dict[str, tuple[float, int]]:
    """Per pool (a target at a batch size: their noise differs), the between-process variance of
    the per-process log ratios, pooled over its cases and both runs (within each run, so a real
    change does not inflate it), with its degrees of freedom."""
    sums: dict[str, list[float]] = {}
    for rows in (base, new):
        for row in rows.values():
            if len(row.processes) >= 2:
                acc = sums.setdefault(row.pool, [0.0, 0])
                acc[0] += stats.sum_squares(row.processes)
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
    it (``stats.shift_interval``, 95 %, two-sided) with its pool's variance (``_pooled_variances``)
    or its own where that is larger by an F-test; None when neither exists (one process a side,
    alone)."""
    kind = _kind(slowdown, threshold)
    test = stats.shift_interval(base, new, pooled)
    if test is None:
        return None
    shift, half = test
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
    # A pass that became vacuous lost its check: a wrong file would now pass too.
    if n.vacuous and not b.vacuous and b.passed is True:
        return Change(n.key, "now vacuous", n.target, detail="pass -> vacuous: the reference can no longer "
                      "tell a wrong file from a right one")  # fmt: skip
    if b.vacuous and not n.vacuous and n.passed is True:
        return Change(n.key, "fixed", n.target, detail="vacuous -> pass: agreement is checked again")
    return None


def _value(row: Row, rows: Mapping[str, Row], metric: str, relative: bool) -> float | None:
    own = row.metrics.get(metric)
    if own is None or not relative:
        return own
    if metric == "fastest" and row.ratio is not None:
        return row.ratio.value
    return _metric_ratio(row, rows, metric)


def _metric_ratio(row: Row, rows: Mapping[str, Row], metric: str) -> float | None:
    """The row's ``metric`` over its reference's in the same run (unpaired: each side's own figure)."""
    ref = rows.get(row.reference_key or "")
    own = row.metrics.get(metric)
    base = ref.metrics.get(metric) if ref is not None and ref.status == "ok" else None
    return own / base if own and base else None


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
