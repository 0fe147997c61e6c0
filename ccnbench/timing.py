"""The one timing protocol for every target.

Inputs are staged on the target's device before timing and outputs stay there. Warm-up runs
for at least W iterations *and* T seconds; measurement for at least N iterations *and* T
seconds (capped). On the CPU each iteration is timed with ``perf_counter_ns``. On CUDA each
iteration is bracketed by CUDA events recorded on the runner's own stream, the host's enqueue
time is kept beside it, and the device is synchronised once at the end; to stop the host
running arbitrarily far ahead, it waits for the event of the iteration ``_MAX_IN_FLIGHT``
back, which never drains the queue. Which clock is used depends only on ``Runner.is_cuda``.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ccnbench.backends.base import Runner, Target

_MAX_IN_FLIGHT = 32


@dataclass(frozen=True)
class Protocol:
    warmup_iterations: int = 10
    warmup_seconds: float = 0.5
    min_iterations: int = 30
    min_seconds: float = 1.0
    max_iterations: int = 100_000
    max_seconds: float = 20.0
    # Contests (formats of one model timed side by side, see contest.py). A round times each
    # member for one block of ``block_seconds`` (its first call discarded); rounds go on until
    # every ratio to its reference has a 95 % interval within +-``target_width`` or
    # ``contest_seconds`` (per batch size, per process) is spent. The contest runs in
    # ``repeats`` fresh processes so the intervals carry the between-process variance.
    contest: bool = True
    block_seconds: float = 0.05
    # Before each block, wait at most this long for the previous member's idle threads to stop
    # spinning (contest.settle); without it a member is timed against its predecessor's threads.
    settle_seconds: float = 0.5
    min_rounds: int = 6
    contest_seconds: float = 3.0
    target_width: float = 0.03
    repeats: int = 3

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


DEFAULT = Protocol()
# CI and smoke runs: enough samples for a median, not for tails.
QUICK = Protocol(
    warmup_iterations=3,
    warmup_seconds=0.05,
    min_iterations=10,
    min_seconds=0.1,
    max_seconds=5.0,
    contest_seconds=1.0,
    settle_seconds=0.1,
)


@dataclass(frozen=True)
class Block:
    """One member's block of consecutive iterations in one round of one contest process."""

    process: int
    round: int
    samples_ms: tuple[float, ...]

    @property
    def median(self) -> float:
        return float(np.median(self.samples_ms))


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

    def __post_init__(self) -> None:
        if not self.samples_ms:
            raise ValueError("no latency samples")

    @classmethod
    def from_blocks(cls, blocks: Sequence[Block], batch: int, clock: str, **kwargs: Any) -> LatencyStats:
        samples = tuple(s for b in blocks for s in b.samples_ms)
        return cls(samples, batch, clock, blocks=tuple(blocks), **kwargs)

    @property
    def processes(self) -> int:
        return len({b.process for b in self.blocks})

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

    def _p(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.samples_ms), q, method="linear"))

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
        return self._p(50)

    @property
    def p90(self) -> float:
        return self._p(90)

    @property
    def p95(self) -> float:
        return self._p(95)

    @property
    def p99(self) -> float:
        return self._p(99)

    @property
    def throughput(self) -> float:
        """Samples per second at the median latency."""
        return self.batch / (self.median / 1e3)

    @property
    def gflops(self) -> float | None:
        """Achieved GFLOP/s at the median latency."""
        if not self.flops_per_sample:
            return None
        return self.flops_per_sample * self.batch / (self.median / 1e3) / 1e9

    @property
    def host_median(self) -> float | None:
        return float(np.median(self.host_samples_ms)) if self.host_samples_ms else None

    def summary(self) -> dict[str, Any]:
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
        return {k: getattr(self, k) for k in keys} | {"host_median": self.host_median}

    def to_dict(self) -> dict[str, Any]:
        data = {
            "batch": self.batch,
            "clock": self.clock,
            "flops_per_sample": self.flops_per_sample,
            "warmup_iterations": self.warmup_iterations,
            "summary": self.summary(),
            "samples_ms": [] if self.blocks else [round(s, 6) for s in self.samples_ms],
            "host_samples_ms": [round(s, 6) for s in self.host_samples_ms],
        }
        if self.blocks:  # [process, round, samples]; samples_ms is their concatenation, not stored twice.
            # 0.1 us resolution: below the timer's own overhead, and it keeps the file small.
            data["blocks"] = [[b.process, b.round, [round(s, 4) for s in b.samples_ms]] for b in self.blocks]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyStats:
        blocks = tuple(Block(int(p), int(r), tuple(s)) for p, r, s in data.get("blocks") or ())
        return cls(
            samples_ms=tuple(s for b in blocks for s in b.samples_ms)
            if blocks
            else tuple(data["samples_ms"]),
            batch=int(data["batch"]),
            clock=data["clock"],
            flops_per_sample=data.get("flops_per_sample"),
            host_samples_ms=tuple(data.get("host_samples_ms", ())),
            warmup_iterations=int(data.get("warmup_iterations", 0)),
            blocks=blocks,
        )


@dataclass
class Measurement:
    latency: LatencyStats
    transfers: LatencyStats | None = None  # CUDA: host->device, inference, device->host


def stage(inputs: Sequence[Tensor], runner: Runner) -> list[Tensor]:
    """Copy inputs to the runner's device and dtype, outside any timed region."""
    staged = [x.to(device=runner.device, dtype=runner.input_dtype).contiguous() for x in inputs]
    if runner.is_cuda:
        torch.cuda.synchronize()
    return staged


def measure(
    runner: Runner,
    inputs: Sequence[Tensor],
    protocol: Protocol = DEFAULT,
    flops_per_sample: int | None = None,
    transfers: bool = False,
) -> Measurement:
    """Time ``runner`` on ``inputs`` (CPU tensors) with the protocol; see the module docstring."""
    batch = int(inputs[0].shape[0])
    staged = stage(inputs, runner)
    call = _bound_call(runner, staged)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside the loop is the harness's pause, not the model's
    try:
        warmups = _warm_up(call, runner, protocol)
        if runner.is_cuda:
            device_ms, host_ms = _cuda_loop(call, runner, protocol)
            latency = LatencyStats(device_ms, batch, "cuda_events", flops_per_sample, host_ms, warmups)
        else:
            samples = _cpu_loop(call, protocol)
            latency = LatencyStats.from_ns(
                samples, batch, flops_per_sample=flops_per_sample, warmup_iterations=warmups
            )
        moved = (
            _transfer_loop(runner, inputs, staged, protocol, batch) if transfers and runner.is_cuda else None
        )
    finally:
        if gc_was_enabled:
            gc.enable()
    return Measurement(latency, moved)


def timer_overhead_ns(protocol: Protocol = QUICK, device: str = "cpu") -> float:
    """Median cost of the harness itself: the same loop around a call that does nothing."""
    runner = _NoopRunner(Target("noop", device), ("x",))
    stats = measure(runner, [torch.zeros(1)], protocol).latency
    return stats.median * 1e6


def time_block(call: Callable[[], object], runner: Runner, seconds: float) -> tuple[float, ...]:
    """One contest block: consecutive iterations for about ``seconds``, ms each.

    The first call is run but not kept: it pays for whatever the member before it evicted from
    the caches, which a model serving requests back to back does not see.
    """
    call()
    if runner.is_cuda:
        torch.cuda.synchronize()
        block = Protocol(min_iterations=2, min_seconds=seconds, max_seconds=max(4 * seconds, 1.0))
        return _cuda_loop(call, runner, block)[0]
    clock = time.perf_counter_ns
    samples: list[int] = []
    append = samples.append
    limit, total = seconds * 1e9, 0
    while len(samples) < 2 or total < limit:
        t0 = clock()
        call()
        t1 = clock()
        append(t1 - t0)
        total += t1 - t0
    return tuple(s / 1e6 for s in samples)


def warm_up(call: Callable[[], object], runner: Runner, protocol: Protocol) -> int:
    return _warm_up(call, runner, protocol)


def bound_call(runner: Runner, staged: list[Tensor]) -> Callable[[], object]:
    return _bound_call(runner, staged)


# --- loops ----------------------------------------------------------------------------------------


def _bound_call(runner: Runner, staged: list[Tensor]) -> Callable[[], object]:
    infer = runner.infer

    def call() -> object:
        return infer(staged)

    return call


def _warm_up(call: Callable[[], object], runner: Runner, protocol: Protocol) -> int:
    start = time.perf_counter()
    count = 0
    while count < protocol.warmup_iterations or time.perf_counter() - start < protocol.warmup_seconds:
        call()
        count += 1
        if time.perf_counter() - start > protocol.max_seconds:
            break
    if runner.is_cuda:
        torch.cuda.synchronize()
    return count


def _cpu_loop(call: Callable[[], object], protocol: Protocol) -> list[int]:
    clock = time.perf_counter_ns
    samples: list[int] = []
    append = samples.append
    min_ns, max_ns = protocol.min_seconds * 1e9, protocol.max_seconds * 1e9
    total = 0
    while True:
        t0 = clock()
        call()
        t1 = clock()
        append(t1 - t0)
        total += t1 - t0
        n = len(samples)
        if (
            (n >= protocol.min_iterations and total >= min_ns)
            or n >= protocol.max_iterations
            or total >= max_ns
        ):
            return samples


def _cuda_loop(
    call: Callable[[], object], runner: Runner, protocol: Protocol
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    stream = runner.stream or torch.cuda.current_stream()
    starts: list[torch.cuda.Event] = []
    ends: list[torch.cuda.Event] = []
    host: list[int] = []
    clock = time.perf_counter_ns
    begin = time.perf_counter()
    while True:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        t0 = clock()
        call()
        t1 = clock()
        end.record(stream)
        starts.append(start)
        ends.append(end)
        host.append(t1 - t0)
        n = len(ends)
        if n > _MAX_IN_FLIGHT:
            ends[n - 1 - _MAX_IN_FLIGHT].synchronize()  # back-pressure without draining the queue
        elapsed = time.perf_counter() - begin
        if (n >= protocol.min_iterations and elapsed >= protocol.min_seconds) or n >= protocol.max_iterations:
            break
        if elapsed >= protocol.max_seconds:
            break
    torch.cuda.synchronize()
    device_ms = tuple(s.elapsed_time(e) for s, e in zip(starts, ends))
    return device_ms, tuple(h / 1e6 for h in host)


def _transfer_loop(
    runner: Runner, inputs: Sequence[Tensor], staged: list[Tensor], protocol: Protocol, batch: int
) -> LatencyStats:
    """End to end on CUDA: pinned host inputs -> device, inference, outputs -> pinned host."""
    stream = runner.stream or torch.cuda.current_stream()
    host_inputs = [x.to(runner.input_dtype).pin_memory() for x in inputs]
    outputs = runner.infer(staged)
    host_outputs = [y.new_empty(y.shape, device="cpu").pin_memory() for y in outputs]
    torch.cuda.synchronize()

    def call() -> object:
        with torch.cuda.stream(stream):
            for dst, src in zip(staged, host_inputs):
                dst.copy_(src, non_blocking=True)
        ys = runner.infer(staged)
        with torch.cuda.stream(stream):  # the runner enqueued its work on this stream too
            for dst, src in zip(host_outputs, ys):
                dst.copy_(src, non_blocking=True)
        return ys

    _warm_up(call, runner, protocol)
    device_ms, host_ms = _cuda_loop(call, runner, protocol)
    return LatencyStats(device_ms, batch, "cuda_events", None, host_ms)


class _NoopRunner(Runner):
    def infer(self, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
        return tuple(inputs)
