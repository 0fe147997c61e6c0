"""Latency samples and what follows from them: ``Block`` (one member's block in a contest round)
and ``LatencyStats`` (every sample of a case, its statistics derived, never stored in place of
the samples). Plain data over numpy: results, statistics and reports read it without torch;
``ccnbench.measure.timing`` produces it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# A contest process whose fastest call of a format sat more than this far above the fastest
# process's ran disturbed throughout: on a busy shared host another job can hold a core for the
# whole of a process's contest (seconds), and then no call of that format in it ran at the
# format's own speed. Such a process says nothing about the format. Measured on a 2-core AMD
# EPYC (2026-12-01): a tiny model's ONNX Runtime call took 0.20 ms in calm blocks and 0.28-0.34
# ms in disturbed ones, and one process of four had no calm block in 2.5 s. Between two busy
# `make bench` runs, ratios over the calm processes moved 0.033-0.035 (RMS of log) against
# 0.073-0.075 over all of them; 1.10 and 1.20 did no better (0.033-0.040, 0.036-0.037).
CALM = 1.15


def calm(fastest_by_process: dict[int, float]) -> dict[int, float]:
    """The processes (and their fastest calls) that did not run disturbed throughout: those whose
    fastest call is at most ``CALM`` times the fastest process's."""
    floor = min(fastest_by_process.values(), default=0.0)
    return {p: f for p, f in fastest_by_process.items() if f <= CALM * floor}


@dataclass(frozen=True)
class Block:
    """One member's block of consecutive iterations in one round of one contest process. On
    CUDA it keeps the host's enqueue time of each iteration beside its device time, and the SM
    clock read right after the block (a card that idles at 345 MHz may not have boosted yet)."""

    process: int
    round: int
    samples_ms: tuple[float, ...]
    host_ms: tuple[float, ...] = ()
    sm_clock_mhz: int | None = None

    @property
    def median(self) -> float:
        return float(np.median(self.samples_ms))

    @property
    def fastest(self) -> float:
        return min(self.samples_ms)


@dataclass(frozen=True)
class LatencyStats:
    """Per-iteration latencies (ms) and what follows from them. Raw samples are kept."""

    samples_ms: tuple[float, ...]
    batch: int
    clock: str  # "perf_counter" or "cuda_events"
    flops_per_sample: int | None = None
    host_samples_ms: tuple[float, ...] = ()  # CUDA: host time to enqueue each iteration
    warmup_iterations: int = 0
    # Contest cases: the same samples, grouped by (process, round) so that two members of one
    # contest can be paired after the fact; ``samples_ms`` is then their concatenation.
    blocks: tuple[Block, ...] = ()
    # CUDA: the SM clock (MHz) the case ran at: the median over its blocks, or read after the loop.
    sm_clock_mhz: float | None = None

    def __post_init__(self) -> None:
        if not self.samples_ms:
            raise ValueError("no latency samples")

    @classmethod
    def from_blocks(cls, blocks: Sequence[Block], batch: int, clock: str, **kwargs: Any) -> LatencyStats:
        samples = tuple(s for b in blocks for s in b.samples_ms)
        if all(b.host_ms for b in blocks):
            kwargs.setdefault("host_samples_ms", tuple(h for b in blocks for h in b.host_ms))
        clocks = [b.sm_clock_mhz for b in blocks if b.sm_clock_mhz is not None]
        if clocks:
            kwargs.setdefault("sm_clock_mhz", float(np.median(clocks)))
        return cls(samples, batch, clock, blocks=tuple(blocks), **kwargs)

    @property
    def processes(self) -> int:
        return len({b.process for b in self.blocks})

    def fastest_by_process(self) -> dict[int, float]:
        """Per contest process: the fastest call (ms) in it ({} without blocks)."""
        out: dict[int, float] = {}
        for b in self.blocks:
            out[b.process] = min(out.get(b.process, np.inf), b.fastest)
        return out

    def calm_processes(self) -> dict[int, float]:
        """``fastest_by_process`` without the processes that ran disturbed throughout (``calm``)."""
        return calm(self.fastest_by_process())

    @property
    def fastest(self) -> float:
        """The fastest call (ms): with contest blocks, the geometric mean over its calm processes
        (``calm_processes``) of each one's fastest call; without, the fastest sample. Timing
        noise on a shared machine only ever adds time, so this is the run's most repeatable
        figure; the median and percentiles say what a caller waits under the host's load, which
        moves them between runs (``percentile_by_process``: how far it moved them between
        processes of one run)."""
        calm = self.calm_processes()
        if not calm:
            return self.min
        return float(np.exp(np.mean(np.log(list(calm.values())))))

    def percentile_by_process(self, q: float) -> dict[int, float]:
        """Per contest process: the ``q``-th percentile (0-100) of that process's samples, over all
        its blocks ({} without blocks). How far these lie apart is how much the figure moved with
        the host's load between processes of one run."""
        by_process: dict[int, list[float]] = {}
        for b in self.blocks:
            by_process.setdefault(b.process, []).extend(b.samples_ms)
        return {p: _percentile(s, q) for p, s in sorted(by_process.items())}

    def median_by_process(self) -> dict[int, float]:
        return self.percentile_by_process(50)

    def p99_by_process(self) -> dict[int, float]:
        return self.percentile_by_process(99)

    def percentile_range(self, q: float) -> tuple[float, float] | None:
        """The lowest and highest per-process ``q``-th percentile (``percentile_by_process``); None
        below two processes, where there is no range to show."""
        values = self.percentile_by_process(q).values()
        return (min(values), max(values)) if len(values) >= 2 else None

    @property
    def noise(self) -> float | None:
        """Within-run noise: the coefficient of variation of the block (round) medians."""
        if len(self.blocks) < 2:
            return None
        medians = np.array([b.median for b in self.blocks])
        return float(np.std(medians, ddof=1) / np.mean(medians))

    @classmethod
    def from_ns(cls, samples_ns: Sequence[int], batch: int, **kwargs: Any) -> LatencyStats:
        return cls(tuple(s / 1e6 for s in samples_ns), batch, "perf_counter", **kwargs)

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0-100) of every sample."""
        return _percentile(self.samples_ms, q)

    @property
    def iterations(self) -> int:
        return len(self.samples_ms)

    @property
    def min(self) -> float:
        return min(self.samples_ms)

    @property
    def max(self) -> float:
        return max(self.samples_ms)

    @property
    def mean(self) -> float:
        return float(np.mean(self.samples_ms))

    @property
    def std(self) -> float:
        return float(np.std(self.samples_ms, ddof=1)) if self.iterations > 1 else 0.0

    @property
    def median(self) -> float:
        return self.percentile(50)

    @property
    def p90(self) -> float:
        return self.percentile(90)

    @property
    def p95(self) -> float:
        return self.percentile(95)

    @property
    def p99(self) -> float:
        return self.percentile(99)

    @property
    def throughput(self) -> float:
        """Samples per second at the median latency, which moves with the host's load (results.json
        stores it; views print ``throughput_at_fastest``)."""
        return self.batch / (self.median / 1e3)

    @property
    def gflops(self) -> float | None:
        """Achieved GFLOP/s at the median latency, as ``throughput``."""
        if not self.flops_per_sample:
            return None
        return self.flops_per_sample * self.batch / (self.median / 1e3) / 1e9

    @property
    def throughput_at_fastest(self) -> float:
        """Samples per second at the fastest call (``fastest``): the rate of the format's own speed,
        which repeats between runs on one machine, where the rate at the median moves with the
        host's load."""
        return self.batch / (self.fastest / 1e3)

    @property
    def gflops_at_fastest(self) -> float | None:
        """Achieved GFLOP/s at the fastest call (``fastest``), as ``throughput_at_fastest``."""
        if not self.flops_per_sample:
            return None
        return self.flops_per_sample * self.batch / (self.fastest / 1e3) / 1e9

    @property
    def host_median(self) -> float | None:
        return float(np.median(self.host_samples_ms)) if self.host_samples_ms else None

    def summary(self) -> dict[str, Any]:
        """What results.json stores beside the samples. Its ``throughput`` and ``gflops`` are at the
        median, as every stored run has them; views print the rates at the fastest call."""
        keys = (
            "min",
            "mean",
            "median",
            "p90",
            "p95",
            "p99",
            "max",
            "std",
            "iterations",
            "throughput",
            "gflops",
            "noise",
        )
        return {k: getattr(self, k) for k in keys} | {
            "host_median": self.host_median,
            "sm_clock_mhz": self.sm_clock_mhz,
        }

    def to_dict(self) -> dict[str, Any]:
        data = {
            "batch": self.batch,
            "clock": self.clock,
            "flops_per_sample": self.flops_per_sample,
            "warmup_iterations": self.warmup_iterations,
            "summary": self.summary(),
            "samples_ms": [] if self.blocks else [round(s, 6) for s in self.samples_ms],
            "host_samples_ms": []
            if _host_in_blocks(self.blocks)
            else [round(s, 6) for s in self.host_samples_ms],
            "sm_clock_mhz": self.sm_clock_mhz,
        }
        if self.blocks:  # [process, round, samples(, host, sm clock)]; samples_ms is their concatenation.
            # 0.1 us resolution: below the timer's own overhead, and it keeps the file small.
            data["blocks"] = [_block_row(b) for b in self.blocks]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyStats:
        blocks = tuple(_block_from_row(row) for row in data.get("blocks") or ())
        host = tuple(data.get("host_samples_ms", ())) or tuple(h for b in blocks for h in b.host_ms)
        return cls(
            samples_ms=tuple(s for b in blocks for s in b.samples_ms)
            if blocks
            else tuple(data["samples_ms"]),
            batch=int(data["batch"]),
            clock=data["clock"],
            flops_per_sample=data.get("flops_per_sample"),
            host_samples_ms=host,
            warmup_iterations=int(data.get("warmup_iterations", 0)),
            blocks=blocks,
            sm_clock_mhz=data.get("sm_clock_mhz"),
        )


def _percentile(samples: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q, method="linear"))


def _host_in_blocks(blocks: Sequence[Block]) -> bool:
    return bool(blocks) and all(b.host_ms for b in blocks)


def _block_row(b: Block) -> list[Any]:
    row: list[Any] = [b.process, b.round, [round(s, 4) for s in b.samples_ms]]
    if b.host_ms or b.sm_clock_mhz is not None:
        row += [[round(h, 4) for h in b.host_ms], b.sm_clock_mhz]
    return row


def _block_from_row(row: Sequence[Any]) -> Block:
    """A stored block: ``[process, round, samples]``, or with ``host, sm_clock`` after them."""
    process, round_, samples = row[:3]
    host, clock = (tuple(row[3]), row[4]) if len(row) >= 5 else ((), None)
    return Block(int(process), int(round_), tuple(samples), host, None if clock is None else int(clock))
