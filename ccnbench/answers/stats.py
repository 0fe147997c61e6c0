"""Intervals for medians and paired ratios, from the blocks a contest records, and the verdict on them.

A contest times its members in rounds (one block each) in several fresh processes, so a
sample has two levels: processes, and rounds within a process. The process level matters: the
same file can run 30 % slower for the whole life of one process. So the unit of evidence is the
process: each process gives one statistic, and with K >= 2 processes the interval is a
t-interval over those K values, ``mean ± t(0.975, K-1) · s/√K``. That is wide at K = 2
(t = 12.7), as it must be: two processes cannot say how far a third would land. A bootstrap over
processes is far too narrow at K = 2-3, which is why it is not used. With one process the
interval comes from its rounds alone and is labelled *within-process*: it says nothing about how
the next process would do.

A latency's statistic (``median_interval``) is the median over a process's rounds of their block
medians, with that median's within-process standard error as a floor on the half-width (two
processes that happen to agree do not make an interval narrower than their own rounds allow).

A format's own speed (``fastest_interval``) is its fastest call, the geometric mean over calm
processes, with the t-interval over those processes' log fastest calls; one calm process gives no
interval.

A ratio's statistic is the *fastest-call ratio*: member A's fastest call in the process over
member B's. On a shared machine noise only ever adds time (a neighbour's burst, a kernel
thread), and it comes in episodes of a second or so that slow some members more than others
(memory-bound ONNX Runtime more than OpenVINO): a round's paired ratio moves with them, and a
process's median over rounds with the share of its rounds they hit. Each member's fastest call
is what it does when nothing interferes (the minimum, as BenchmarkTools.jl's ``judge`` compares;
Chen and Revels 2016). Measured on four ``make bench`` runs (156 pairs of shippable formats within
12 % of each other, five processes each), the between-process standard deviation of the log
ratio was 0.023 (median) for fastest calls and 0.060 for medians of paired rounds. Members of
one contest share their processes and rounds, so the fastest calls of a process are taken in the
same minute: pairing is by process.

An episode can also last through a whole process's contest (seconds), and then no call of a
member in that process ran at its own speed: a process counts for a ratio only where both
members' fastest calls lie within ``samples.CALM`` (15 %) of their fastest process's
(``samples.calm``); the others are left out, and an interval left with one
process is no narrower than the t-interval over all of them.

Pairs only exist inside one contest of one run: that rule is :func:`paired_processes`, and every
view compares two cases through :func:`pair` (the ratio and its interval) or
:func:`process_ratios` (its per-process units, for the regression gate) built on it; anything
else is a ratio of the fastest calls, marked *unpaired*.

A ratio's verdict (:func:`verdict`): a *tie* when it is shown to lie inside the equivalence
margin (±``EQUIVALENCE``, 10 %): two one-sided tests at 5 % each, i.e. its 90 % interval (``tie_low``,
``tie_high``) lies inside; *faster* or *slower* when its 95 % interval excludes parity, and
*inconclusive* when it contains parity but is too wide to call a tie (then more processes
resolve it: :func:`resolve_hint`). Where a ratio decides between shipping a simpler format and a
faster one (``material``), the margin is the question: *slower*/*faster* then need the 90 %
interval beyond it, and one across its edge is inconclusive. Every view takes its verdict from here.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ccnbench.measure.samples import calm
from ccnbench.measure.timing import LatencyStats


class Timed(Protocol):
    """What ``pair`` reads of a case (``results.CaseResult`` is one): stats sits below results
    in the dependency order, so it names the fields instead of importing the class."""

    status: str
    contest: str | None
    run: str | None
    latency: LatencyStats | None


CONFIDENCE = 0.95
# Equivalence is two one-sided tests, "not more than the margin slower" and "not more than the margin
# faster", each at 5 % (TOST, Schuirmann 1987; how bioequivalence is judged): both pass exactly when
# the 90 % interval lies inside the margin. Asking the 95 % interval to fit tests each side at 2.5 %,
# which made a 1.03x ratio with a +-8 % interval "inconclusive" at four processes.
TIE_CONFIDENCE = 0.90
# Two formats whose ratio is known to lie within ±10 % of parity are a tie: the same speed for
# choosing what to ship. 10 % is the slow-down ``compare`` calls a regression by default (a
# difference the gate would let through is no reason to ship a harder format) and asv's default
# factor; ratios between runtimes move by up to 35 % from one CPU to another, and on a shared
# 2-core machine a process's median moves by ~3 % (one thread) to ~10 % (two) between processes.
# ``recommend --margin`` takes another. The bound is symmetric in ratio: [1/1.1, 1.1].
EQUIVALENCE = 0.10
# A run whose round medians vary more than this (CV) cannot resolve differences of a few percent.
NOISY_CV = 0.10
# The standard error of a median of n normal values is sqrt(pi/2) ≈ 1.2533 times that of their mean.
_MEDIAN_SE = math.sqrt(math.pi / 2)
# The median absolute deviation of normal values is 1/1.4826 of their standard deviation.
_MAD_SIGMA = 1.4826

BETWEEN = "between-process"
WITHIN = "within-process"
UNPAIRED = "unpaired"
SCOPES = (BETWEEN, WITHIN, UNPAIRED)


@dataclass(frozen=True)
class Interval:
    """A point estimate and its 95 % interval.

    ``scope``: ``between-process`` (K >= 2 processes: the interval includes the process-to-process
    spread), ``within-process`` (one process: its rounds only) or ``unpaired`` (a ratio of the
    fastest calls of cases that never ran in one contest: no interval). ``low``/``high`` are NaN when the
    interval is not computable (``computable`` is False). ``p_value`` (paired ratios, K >= 2) is
    the t-test of the per-process log ratios against parity; ``processes`` is K. ``tie_low`` and
    ``tie_high`` bound the same estimate at ``TIE_CONFIDENCE`` (90 %), which the tie test reads.
    """

    value: float
    low: float
    high: float
    n: int = 0
    p_value: float | None = None
    processes: int = 0
    scope: str = BETWEEN
    tie_low: float = math.nan
    tie_high: float = math.nan
    timed: int = 0  # paired ratios: the processes that timed both, calm or not

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")

    @property
    def computable(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    def contains(self, x: float) -> bool:
        return self.computable and self.low <= x <= self.high

    @property
    def tie_bounds(self) -> tuple[float, float]:
        """What the tie test reads: the 90 % bounds, or the 95 % ones for an interval made without them."""
        if math.isfinite(self.tie_low) and math.isfinite(self.tie_high):
            return self.tie_low, self.tie_high
        return self.low, self.high

    @property
    def tie(self) -> bool:
        """For a ratio: shown inside the equivalence margin (``verdict``: its 90 % interval lies inside)."""
        return verdict(self) == "tie"

    @property
    def one_calm_of_several(self) -> bool:
        """A within-process interval where other processes timed both formats but ran disturbed:
        it rests on one of several processes, not on a protocol of one process per contest."""
        return self.scope == WITHIN and self.timed > 1

    @property
    def relative_half_width(self) -> float:
        if not self.computable or not self.value:
            return math.inf
        return (self.high - self.low) / 2 / self.value

    def inverse(self) -> Interval:
        return Interval(
            1 / self.value,
            1 / self.high,
            1 / self.low,
            self.n,
            self.p_value,
            self.processes,
            self.scope,
            1 / self.tie_high,
            1 / self.tie_low,
            self.timed,
        )

    def format(self, digits: int = 2, suffix: str = "×") -> str:
        value = f"{self.value:.{digits}f}{suffix}"
        if self.scope == UNPAIRED:
            return f"{value} unpaired"
        if not self.computable:
            return f"{value} [not computable]"
        text = f"{value} [{self.low:.{digits}f}, {self.high:.{digits}f}]"
        return text + (" within-process" if self.scope == WITHIN else "")

    def to_dict(self) -> dict[str, float | int | str | None]:
        out = dict(self.__dict__)
        for key in ("low", "high", "tie_low", "tie_high"):  # JSON has no NaN
            if not math.isfinite(out[key]):
                out[key] = None
        return out


def verdict(interval: Interval | None, margin: float = EQUIVALENCE, material: bool = False) -> str:
    """The one verdict on a ratio, shared by every view: ``tie`` (shown inside ±``margin`` of
    parity: the 90 % interval lies inside; an interval made without one, the 95 % one),
    ``slower`` (the 95 % interval lies above parity: the numerator is slower), ``faster``,
    ``inconclusive`` (contains parity, or cannot be computed), or ``unpaired`` (no interval).

    ``material``: the ratio decides between shipping a simpler format (in a tie) and a faster
    one, so the margin is the question, not parity: ``slower``/``faster`` need the 90 % interval
    beyond the margin (the one-sided test at 5 % that the gap exceeds it, as the tie's two are),
    and an interval across the margin's edge is ``inconclusive``. Without this a ratio near the
    edge (1.08x, say) is a tie in one run and "slower" in the next, and what ships flips on both
    runs' confident word. Nor does one calm process of several decide it (``one_calm_of_several``):
    on a busy host all the processes of a run can share one bias, so the disturbed ones agreeing
    does not vouch for the calm one. Measured (2-core AMD EPYC, 2026-12-02, two consecutive
    `make bench` runs): early fusion at batch 8, ONNX Runtime kept 1.33x OpenVINO kept in the
    one calm process and 1.04-1.25x in the five disturbed ones, then 0.98-1.00x in the three
    processes calm for both in the next run."""
    if interval is None or interval.scope == UNPAIRED:
        return "unpaired"
    if not interval.computable:
        return "inconclusive"
    low, high = interval.tie_bounds
    if low >= 1 / (1 + margin) and high <= 1 + margin:
        return "tie"
    if material and interval.one_calm_of_several:
        return "inconclusive"
    if interval.low > 1 and not (material and low <= 1 + margin):
        return "slower"
    if interval.high < 1 and not (material and high >= 1 / (1 + margin)):
        return "faster"
    return "inconclusive"


def tie_evidence(interval: Interval, margin: float = EQUIVALENCE) -> str:
    """Why a ratio is a tie, as answers print it: ``90 % interval [0.97, 1.06] inside ±10%``."""
    low, high = interval.tie_bounds
    return f"{TIE_CONFIDENCE:.0%} interval [{low:.2f}, {high:.2f}] inside ±{margin:.0%}"


def resolve_hint(interval: Interval | None) -> str:
    """What to run to turn an inconclusive ratio into an answer."""
    k = interval.processes if interval else 0
    if interval is not None and interval.scope == UNPAIRED:
        return "time both formats in one contest (one sweep, same model, precision and batch)"
    return (
        f"time more fresh processes per contest: raise `repeats` under [protocol] in the sweep, or "
        f"`max_repeats` and `extra_seconds` to add them only where an answer is open (this interval "
        f"has {k} process{'es' if k != 1 else ''})"
    )


def describe(interval: Interval) -> str:
    """How every view prints a ratio: ``1.84× [1.79, 1.90]``, plus the verdict when it is a tie or
    inconclusive, and ``within-process`` / ``unpaired`` where that applies."""
    word = verdict(interval)
    return interval.format() + (f" {word}" if word in ("tie", "inconclusive") else "")


def median_interval(latency: LatencyStats | None) -> Interval | None:
    """The median latency (ms) with its interval; None without blocks (a schema-1 case).

    Computed on log latencies, so the interval is positive and lies around its own point (the
    geometric mean of the per-process medians, or the one process's median).
    """
    if latency is None or len(latency.blocks) < 2:
        return None
    groups: dict[int, list[float]] = {}
    for block in latency.blocks:
        groups.setdefault(block.process, []).append(math.log(block.median))
    return log_interval(groups, p_value=False)


def fastest_interval(latency: LatencyStats | None) -> Interval | None:
    """A format's own speed: its fastest call (``LatencyStats.fastest``, the geometric mean over
    the calm processes of each one's fastest call) with its 95 % interval over those processes.

    The unit is a calm process's log fastest call, and the interval the t-interval over them that a
    ratio's is (``process_interval``; a fastest call has no within-process error), so its point is
    ``LatencyStats.fastest`` itself. None below two calm processes: one process cannot say where
    the next would land, and a minimum over its rounds has no standard error to stand in. Not
    computable (NaN bounds) when the processes agree exactly.
    """
    calm_fastest = latency.calm_processes() if latency is not None else {}
    if len(calm_fastest) < 2:
        return None
    rows = np.array([[math.log(f) for f in calm_fastest.values()]])
    unknown = np.full(rows.shape, np.nan)
    k = len(calm_fastest)
    point, low, high, _ = process_interval(rows, unknown, k)
    _, tie_low, tie_high, _ = process_interval(rows, unknown, k, TIE_CONFIDENCE)
    bounds = (math.exp(b[0]) for b in (point, low, high))
    return Interval(*bounds, k, None, k, BETWEEN, math.exp(tie_low[0]), math.exp(tie_high[0]))


def paired_ratio(num: LatencyStats | None, den: LatencyStats | None) -> Interval | None:
    """num's latency over den's, paired by process; None when no process timed both.

    The unit is a process's *fastest-call ratio*: num's fastest call in that process over den's,
    over the processes calm for both (``paired_fastest``). K >= 2 such processes: a t-interval
    over those K log ratios. One: the same point, with the half-width of the within-process
    interval of its rounds' paired ratios (``paired_logs``), labelled within-process; where other
    processes timed both but ran disturbed, no narrower than the t-interval over all of them (one
    calm process says nothing about the spread between calm ones). Over 1 means ``num`` is
    slower. Only meaningful for two members of one contest: call :func:`pair` with the cases,
    which checks that.
    """
    shared, fastest = _fastest_logs(num, den)
    if not fastest:
        return None
    # The rounds of the processes that count: n counts them; a one-process interval reads them.
    rounds = {p: logs for p, logs in paired_logs(num, den).items() if p in fastest}
    n = sum(len(v) for v in rounds.values())
    if len(fastest) >= 2:
        point, low, high, tie_low, tie_high, p = _between(fastest, n)
        scope = BETWEEN
    else:
        # One process: its rounds' spread is all there is. Their interval is centred on their
        # median; it is moved onto the fastest-call ratio, which stays the point.
        (unit,), (logs,) = fastest.values(), rounds.values()
        rows = np.array([logs])
        middle, low, high, _ = within_interval(rows)
        _, tie_low, tie_high, _ = within_interval(rows, TIE_CONFIDENCE)
        point = np.array([unit])
        low, high, tie_low, tie_high = (bound + point - middle for bound in (low, high, tie_low, tie_high))
        if len(shared) >= 2:
            # The others timed both but ran disturbed: one process says nothing about the spread
            # between processes, so the interval is no narrower than the t-interval over all.
            _, all_low, all_high, all_tie_low, all_tie_high, _ = _between(shared, n)
            half, tie_half = (all_high - all_low) / 2, (all_tie_high - all_tie_low) / 2
            low, high = np.minimum(low, point - half), np.maximum(high, point + half)
            tie_low, tie_high = np.minimum(tie_low, point - tie_half), np.maximum(tie_high, point + tie_half)
        p, scope = None, WITHIN
    value, low_, high_, tie_low_, tie_high_ = (math.exp(b[0]) for b in (point, low, high, tie_low, tie_high))
    return Interval(value, low_, high_, n, p, len(fastest), scope, tie_low_, tie_high_, len(shared))


def _between(units: dict[int, float], n: int) -> tuple[np.ndarray, ...]:
    """The t-interval over per-process log ratios: point, 95 % bounds, 90 % (tie) bounds, p-value."""
    rows = np.array([list(units.values())])
    unknown = np.full(rows.shape, np.nan)  # a process's fastest call has no within-process error
    point, low, high, p_values = process_interval(rows, unknown, n)
    _, tie_low, tie_high, _ = process_interval(rows, unknown, n, TIE_CONFIDENCE)
    p = float(p_values[0]) if math.isfinite(p_values[0]) else None
    return point, low, high, tie_low, tie_high, p


def paired_fastest(num: LatencyStats | None, den: LatencyStats | None) -> dict[int, float]:
    """Per process that timed both: log(num's fastest call / den's), the unit of every ratio.
    Only processes calm for both count (``samples.calm``): in one where either format ran
    disturbed throughout, the ratio is the disturbance's. All shared ones count when no process
    was calm for both."""
    return _fastest_logs(num, den)[1]


def _fastest_logs(
    num: LatencyStats | None, den: LatencyStats | None
) -> tuple[dict[int, float], dict[int, float]]:
    """Per process that timed both, log(num's fastest call / den's): for all of them, and for
    those calm for both (all of them when none is)."""
    if num is None or den is None:
        return {}, {}
    a, b = num.fastest_by_process(), den.fastest_by_process()
    shared = {p: math.log(a[p] / b[p]) for p in sorted(a) if p in b and a[p] > 0 and b[p] > 0}
    calm_a, calm_b = calm(a), calm(b)
    return shared, {p: u for p, u in shared.items() if p in calm_a and p in calm_b} or shared


def paired_logs(num: LatencyStats | None, den: LatencyStats | None) -> dict[int, list[float]]:
    """Per process: log(num's fastest call in its block / den's in theirs) for each round both
    timed: the rounds a one-process interval (and ``contest.converged``) reads."""
    if num is None or den is None:
        return {}
    by_id = {(b.process, b.round): b.fastest for b in den.blocks}
    groups: dict[int, list[float]] = {}
    for block in num.blocks:
        other = by_id.get((block.process, block.round))
        if other and block.fastest > 0:
            groups.setdefault(block.process, []).append(math.log(block.fastest / other))
    return groups


def paired_processes(num: Timed | None, den: Timed | None) -> dict[int, float]:
    """The one pairing rule: per process, the fastest-call log ratio of two cases
    (``paired_fastest``), but only when both ran (status ok) in the same contest of the same run;
    {} otherwise."""
    return paired_fastest(num.latency, den.latency) if _one_contest(num, den) else {}


def _one_contest(num: Timed | None, den: Timed | None) -> bool:
    """Both ran (status ok), as two cases, in the same contest of the same run."""
    if num is None or den is None or num is den or num.status != "ok" or den.status != "ok":
        return False
    return num.contest is not None and num.contest == den.contest and num.run == den.run


def pair(num: Timed | None, den: Timed | None) -> Interval | None:
    """The one way two cases are compared: num's latency over den's (over 1: num is slower).

    Paired, with its interval (``paired_ratio``), only where :func:`paired_processes` pairs them;
    otherwise the ratio of their fastest calls (``LatencyStats.fastest``), with scope
    ``unpaired``. None when either has no latency (or they are the same case). Every view
    (tables, report, plots, recommend, compare) calls this.
    """
    if num is None or den is None or num is den:
        return None
    if num.status != "ok" or den.status != "ok" or num.latency is None or den.latency is None:
        return None
    paired = paired_ratio(num.latency, den.latency) if _one_contest(num, den) else None
    if paired is not None:
        return paired
    value = num.latency.fastest / den.latency.fastest if den.latency.fastest else math.inf
    return Interval(value, math.nan, math.nan, scope=UNPAIRED)


def process_ratios(num: Timed | None, den: Timed | None) -> tuple[float, ...]:
    """Per contest process, in process order: the fastest-call log ratio of ``pair(num, den)``;
    () when the two do not pair. Each is one unit of a test across processes."""
    return tuple(paired_processes(num, den).values())


def sum_squares(values: Sequence[float]) -> float:
    mean = statistics.fmean(values)
    return sum((v - mean) ** 2 for v in values)


def shift_interval(
    base: Sequence[float], new: Sequence[float], pooled: tuple[float, int] | None = None
) -> tuple[float, float] | None:
    """A two-sample t-test on per-process values (log ratios): the shift ``mean(new) - mean(base)``
    and its 95 % half-width; None when there is no variance to use.

    ``pooled`` (variance, degrees of freedom) is the noise of the case's pool (its target at its
    batch size, over both runs, this case included). It is used unless the case's own variance is
    larger by an F-test (95 %): a case whose processes happen to agree is not judged more sharply
    than its neighbours, one that is really noisier is judged by its own noise, and a case whose
    2+2 processes happen to disagree is not judged with t(0.975, 2) = 4.3 on them alone (with the
    larger of the two, as before, a 1.3x slow-down of 2+2 processes went unresolved in busy hours).
    """
    df_own = len(base) + len(new) - 2
    own = ((sum_squares(base) + sum_squares(new)) / df_own, df_own) if df_own > 0 else None
    noise = pooled or own
    if noise is None:
        return None
    if own and pooled and (pooled[0] <= 0 or own[0] / pooled[0] > _f_quantile(own[1], pooled[1])):
        noise = own
    variance, df = noise
    shift = statistics.fmean(new) - statistics.fmean(base)
    half = float(_student_t().ppf((1 + CONFIDENCE) / 2, df)) * math.sqrt(
        variance * (1 / len(base) + 1 / len(new))
    )
    return shift, half


def _f_quantile(df_num: int, df_den: int) -> float:
    from scipy.stats import f

    return float(f.ppf(CONFIDENCE, df_num, df_den))


def noisy(latency: LatencyStats | None, threshold: float = NOISY_CV) -> bool:
    noise = latency.noise if latency else None
    return noise is not None and noise > threshold


def log_interval(groups: Mapping[int, Sequence[float]], p_value: bool = True) -> Interval:
    """An interval from log values grouped by process (round log ratios, or log latencies),
    returned on the original scale (exp).

    K >= 2 processes: point = mean of the per-process medians, half-width the larger of
    t(0.975, K-1) · s/√K and the within-process one (``process_interval``). K = 1: the process's
    median, half-width t(0.975, n-1) · 1.2533 · sd/√n over its n rounds, scope within-process
    (not computable below 3 rounds or when they are all equal).
    """
    values = [np.asarray(v, dtype=float) for v in groups.values() if len(v)]
    n, k = sum(len(v) for v in values), len(values)
    if k == 1:
        point, low, high, _ = within_interval(values[0][None, :])
        _, tie_low, tie_high, _ = within_interval(values[0][None, :], TIE_CONFIDENCE)
        p = None
    else:
        medians = np.array([[np.median(v) for v in values]])
        ses = np.array([[floor_se(v) for v in values]])
        point, low, high, p_values = process_interval(medians, ses, n)
        _, tie_low, tie_high, _ = process_interval(medians, ses, n, TIE_CONFIDENCE)
        p = float(p_values[0]) if p_value and math.isfinite(p_values[0]) else None
    bounds = (math.exp(b[0]) for b in (point, low, high))
    ties = (math.exp(tie_low[0]), math.exp(tie_high[0]))
    return Interval(*bounds, n, p, k, BETWEEN if k >= 2 else WITHIN, *ties)


def process_interval(
    medians: np.ndarray, ses: np.ndarray, rounds: int | None = None, confidence: float = CONFIDENCE
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised over data sets (rows): per-process medians (D, K) and their within-process standard
    errors (D, K; NaN where unknown) -> point, low, high (at ``confidence``) and the t-test p-value
    against 0.

    The half-width is the larger of t(K-1)·s/√K (the spread seen between processes) and
    t(rounds-K)·SE/√K (what the processes' own rounds allow, SE their root mean square standard
    error): each alone is a 95 % interval, so the larger is at least that. Not computable (NaN
    bounds) when both are zero.
    """
    t = _student_t()
    k = medians.shape[1]
    point = medians.mean(axis=1)
    if k < 2:
        nan = np.full(point.shape, np.nan)
        return point, nan, nan, nan
    q = (1 + confidence) / 2
    between = t.ppf(q, k - 1) * medians.std(axis=1, ddof=1) / math.sqrt(k)
    known = np.all(np.isfinite(ses), axis=1)
    df_within = max(1, (rounds if rounds is not None else 2 * k) - k)
    mean_square = np.mean(np.where(known[:, None], ses, 0.0) ** 2, axis=1)  # rows with a NaN: unused
    within = np.where(known, t.ppf(q, df_within) * np.sqrt(mean_square / k), 0.0)
    half = np.maximum(between, within)
    half = np.where(half > 0, half, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = 2 * t.sf(np.abs(point) / (half / t.ppf(q, k - 1)), k - 1)
    return point, point - half, point + half, p


def within_interval(
    rounds: np.ndarray, confidence: float = CONFIDENCE
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised over data sets (rows) of one process's rounds (D, n): the median and its
    t-interval at ``confidence`` from the rounds alone (not computable below 3 rounds)."""
    t = _student_t()
    n = rounds.shape[1]
    point = np.median(rounds, axis=1)
    nan = np.full(point.shape, np.nan)
    if n < 3:
        return point, nan, nan, nan
    se = _MEDIAN_SE * rounds.std(axis=1, ddof=1) / math.sqrt(n)
    half = t.ppf((1 + confidence) / 2, n - 1) * se
    half = np.where(half > 0, half, np.nan)  # identical rounds prove nothing about the next one
    return point, point - half, point + half, nan


def _student_t():
    """scipy's t distribution, imported on first use: scipy.stats takes over a second to import,
    and most commands never compute an interval."""
    from scipy.stats import t

    return t


def floor_se(rounds: np.ndarray) -> np.ndarray:
    """Standard error of the median of one process's rounds (last axis; NaN below 2 rounds), as the
    between-process interval's floor uses it: √(π/2)·σ/√n with σ estimated robustly, as 1.4826 times
    the median absolute deviation.

    On shared 2-core machines 10-20 % of 50 ms blocks run 1.3-1.6× slow (a neighbour, a kernel
    thread). Such rounds inflate a standard deviation several-fold but barely move a median, whose
    error is set by how densely the other rounds lie around it; a floor from the standard deviation
    made every interval of such a contest wide whatever its processes said. Simulated (tests): with
    15 % of rounds off by ±50 % the floor keeps 95 % coverage at K = 2, 3, 5 and narrows the interval.
    The one-process interval (``within_interval``) keeps the standard deviation: there the scale is
    the whole interval, and the robust one covers only ~91 % at n = 6.
    """
    rounds = np.asarray(rounds, dtype=float)
    n = rounds.shape[-1]
    if n < 2:
        return np.full(rounds.shape[:-1], np.nan)
    deviations = np.abs(rounds - np.median(rounds, axis=-1, keepdims=True))
    return _MEDIAN_SE * _MAD_SIGMA * np.median(deviations, axis=-1) / math.sqrt(n)
