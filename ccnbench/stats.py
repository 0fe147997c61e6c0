"""Intervals for medians and paired ratios, from the blocks a contest records.

A contest times its members in rounds (one block each) in several fresh processes, so a
sample has two levels: processes, and rounds within a process. The process level matters: the
same file can run 30 % slower for the whole life of one process. Intervals therefore come from
a two-stage (cluster) bootstrap: each resample draws processes with replacement and, inside
each drawn process, its rounds with replacement; the statistic is the mean over the drawn
processes of their median. scipy's ``bootstrap`` resamples one level only, so it is used when a
case has a single process; the two-stage resampling is a few lines of numpy. With few
processes a bootstrap under-states the between-process spread by a factor (K-1)/K in variance,
so the interval is widened by sqrt(K/(K-1)) around its point estimate.

Ratios are paired: member A's block median over member B's in the *same* (process, round), so
drift that moves both in a round cancels. Everything is seeded: the same data gives the same
interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ccnbench.timing import LatencyStats

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 20261127
# A run whose round medians vary more than this (CV) cannot resolve differences of a few percent.
NOISY_CV = 0.10


@dataclass(frozen=True)
class Interval:
    """A point estimate and its 95 % interval; ``p_value`` (ratios only) is the Wilcoxon
    signed-rank test of the paired log ratios against parity."""

    value: float
    low: float
    high: float
    n: int = 0
    p_value: float | None = None

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high

    @property
    def tie(self) -> bool:
        """For a ratio: parity lies inside the interval, so the data cannot tell the two apart."""
        return self.contains(1.0)

    @property
    def relative_half_width(self) -> float:
        return (self.high - self.low) / 2 / self.value if self.value else math.inf

    def inverse(self) -> Interval:
        return Interval(1 / self.value, 1 / self.high, 1 / self.low, self.n, self.p_value)

    def format(self, digits: int = 2, suffix: str = "×") -> str:
        return f"{self.value:.{digits}f}{suffix} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def to_dict(self) -> dict[str, float | int | None]:
        return dict(self.__dict__)


def describe(interval: Interval) -> str:
    """How every view prints a ratio: ``1.84× [1.79, 1.90]``, plus ``tie`` when parity is inside."""
    return interval.format() + (" tie" if interval.tie else "")


def median_interval(latency: LatencyStats | None) -> Interval | None:
    """The median latency (ms) with its interval; None without blocks (a schema-1 case)."""
    if latency is None or len(latency.blocks) < 2:
        return None
    groups: dict[int, list[float]] = {}
    for block in latency.blocks:
        groups.setdefault(block.process, []).append(block.median)
    return _interval({p: np.asarray(v) for p, v in groups.items()}, log=False)


def paired_ratio(num: LatencyStats | None, den: LatencyStats | None) -> Interval | None:
    """num's latency over den's, paired by (process, round); None when fewer than 2 pairs.

    Over 1 means ``num`` is slower. Pairs only exist between members of one contest.
    """
    if num is None or den is None or not num.blocks or not den.blocks:
        return None
    by_id = {(b.process, b.round): b.median for b in den.blocks}
    groups: dict[int, list[float]] = {}
    for block in num.blocks:
        other = by_id.get((block.process, block.round))
        if other:
            groups.setdefault(block.process, []).append(math.log(block.median / other))
    if sum(len(v) for v in groups.values()) < 2:
        return None
    interval = _interval({p: np.asarray(v) for p, v in groups.items()}, log=True)
    return Interval(interval.value, interval.low, interval.high, interval.n, _wilcoxon(groups))


def noisy(latency: LatencyStats | None, threshold: float = NOISY_CV) -> bool:
    noise = latency.noise if latency else None
    return noise is not None and noise > threshold


def _interval(groups: Mapping[int, np.ndarray], log: bool) -> Interval:
    """Point = mean over processes of the per-process median; interval by the bootstrap."""
    values = [v for v in groups.values() if len(v)]
    n = sum(len(v) for v in values)
    point = float(np.mean([np.median(v) for v in values]))
    rng = np.random.default_rng(SEED)
    if len(values) == 1:
        low, high = _single_level(values[0], rng)
    else:
        low, high = _two_stage(values, rng)
        widen = math.sqrt(len(values) / (len(values) - 1))
        low, high = point - (point - low) * widen, point + (high - point) * widen
    if log:
        return Interval(math.exp(point), math.exp(low), math.exp(high), n)
    return Interval(point, low, high, n)


def _single_level(values: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    if len(values) < 2 or np.ptp(values) == 0:
        return float(values[0] if np.ptp(values) == 0 else values.min()), float(values.max())
    from scipy.stats import bootstrap

    result = bootstrap(
        (values,),
        np.median,
        n_resamples=RESAMPLES,
        confidence_level=CONFIDENCE,
        method="percentile",  # BCa is unstable for the median of a few rounds
        rng=rng,
        vectorized=True,
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _two_stage(values: Sequence[np.ndarray], rng: np.random.Generator) -> tuple[float, float]:
    # Stage 1, per process: RESAMPLES bootstrap medians of its rounds -> (K, RESAMPLES).
    inner = np.stack([np.median(v[rng.integers(0, len(v), (RESAMPLES, len(v)))], axis=1) for v in values])
    # Stage 2: draw K processes with replacement for each resample, average their medians.
    k = len(values)
    chosen = rng.integers(0, k, (RESAMPLES, k))
    stats = inner[chosen, np.arange(RESAMPLES)[:, None]].mean(axis=1)
    alpha = (1 - CONFIDENCE) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def _wilcoxon(groups: Mapping[int, list[float]]) -> float | None:
    values = [x for v in groups.values() for x in v]
    if len(values) < 6 or not any(values):
        return None
    from scipy.stats import wilcoxon

    return float(wilcoxon(values).pvalue)
