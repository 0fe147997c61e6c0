"""The one timing protocol for every target.

Inputs are staged on the target's device before timing and outputs stay there. Warm-up runs
for at least W iterations *and* T seconds; measurement for at least N iterations *and* T
seconds (capped). On the CPU each iteration is timed with ``perf_counter_ns``. On CUDA each
iteration is bracketed by CUDA events recorded on the runner's own stream, the host's enqueue
time is kept beside it, and the device is synchronised once at the end; to stop the host
running arbitrarily far ahead, it waits for the event of the iteration ``_MAX_IN_FLIGHT``
back, which never drains the queue. Which clock is used depends only on ``Runner.is_cuda``.
The samples come back as ``ccnbench.measure.samples``'s ``Block`` and ``LatencyStats`` (plain data).
"""

from __future__ import annotations

import gc
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ccnbench.backends.base import Runner, Target
from ccnbench.measure.memory import nvml_handle
from ccnbench.measure.samples import Block, LatencyStats

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
    # member for one block of ``block_seconds`` (see time_block); rounds go on until every ratio
    # to its reference has a 95 % interval within +-``target_width`` or
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
    # Up to this many processes in all for a contest whose answer (``ccnbench recommend``, with and
    # without --shippable) is still inconclusive after ``repeats``, one more at a time, for that
    # contest only. 0: exactly ``repeats``.
    max_repeats: int = 0
    # And at most this many seconds of such extra processes per worker chain: one starts only for
    # as many of the open contests as fit, at the seconds per contest the last process took, so
    # the sweep's wall time stays bounded. 0: bounded by ``max_repeats`` alone.
    extra_seconds: float = 0.0
    # A contest's memory pass (contest.py): each member prepared once more against its own
    # baseline after every member has run, so no figure depends on the order. Off only where a
    # second preparation is too dear (compilations on a time-boxed GPU); memory is then read at
    # the first preparation, in a shuffled order, and the case says so (details.memory_pass).
    memory_pass: bool = True

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
    call = bound_call(runner, staged)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside the loop is the harness's pause, not the model's
    try:
        warmups = warm_up(call, runner, protocol)
        if runner.is_cuda:
            device_ms, host_ms = _cuda_loop(call, runner, protocol, _one_call_ms(call, runner))
            latency = LatencyStats(
                device_ms,
                batch,
                "cuda_events",
                flops_per_sample,
                host_ms,
                warmups,
                sm_clock_mhz=sm_clock_mhz(),
            )
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


def time_block(
    call: Callable[[], object],
    runner: Runner,
    seconds: float,
    process: int = 0,
    round_: int = 0,
    previous_ms: float | None = None,
) -> Block:
    """One contest block: consecutive iterations for about ``seconds``, ms each.

    The first call is run but not kept: it pays for whatever the member before it evicted from
    the caches, which a model serving requests back to back does not see. A call known to fill the
    block (the member's last block median, ``previous_ms``, or the discarded call itself) needs
    neither the discarded call nor a second kept one: such a call streams far more than the caches
    hold, and its first call after the other members ran was measured within 1 % of the next (eager
    model fusion at batch 8, 111 ms: 0.999 and 1.007), while two spare calls made eager PyTorch 40 %
    of ``make bench``'s round time. On CUDA the first call is also timed with events, and the block
    is sized by device time from it (see ``_cuda_loop``).
    """
    if runner.is_cuda:
        estimate = _one_call_ms(call, runner)
        block = Protocol(min_iterations=2, min_seconds=seconds, max_seconds=max(4 * seconds, 1.0))
        device_ms, host_ms = _cuda_loop(call, runner, block, estimate)
        return Block(process, round_, device_ms, host_ms, sm_clock_mhz())

    def fills(ms: float | None) -> bool:
        return seconds > 0 and ms is not None and ms >= seconds * 1e3

    one_call = fills(previous_ms)
    if not one_call:  # not known to fill the block: one discarded call, which may tell
        start = time.perf_counter()
        call()
        one_call = fills((time.perf_counter() - start) * 1e3)
    # On the CPU a block has no cap: it ends after its minimum iterations and ``seconds``, however long.
    block = Protocol(
        min_iterations=1 if one_call else 2,
        min_seconds=seconds,
        max_iterations=sys.maxsize,
        max_seconds=math.inf,
    )
    return Block(process, round_, tuple(s / 1e6 for s in _cpu_loop(call, block)))


# --- loops ----------------------------------------------------------------------------------------


def bound_call(runner: Runner, staged: list[Tensor]) -> Callable[[], object]:
    """``runner.infer`` on ``staged`` as a call without arguments: what every loop times."""
    infer = runner.infer

    def call() -> object:
        return infer(staged)

    return call


def warm_up(call: Callable[[], object], runner: Runner, protocol: Protocol) -> int:
    """Run ``call`` for the protocol's warm-up (iterations *and* seconds, capped by
    ``max_seconds``), then synchronise a CUDA runner; returns the iterations run."""
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


class DeviceTime:
    """Device time of a CUDA loop so far: the iterations whose end event has completed, plus a
    projection for those still in flight (their mean so far, or ``estimate_ms`` before any has
    finished). Sizing a loop by this, not by the host's clock, keeps a block to its budget: the
    host enqueues in microseconds and may run up to ``_MAX_IN_FLIGHT`` iterations ahead, which
    turned a 1 s budget into 2.9 s at batch 32."""

    def __init__(self, estimate_ms: float | None) -> None:
        self.estimate_ms, self.done, self.total_ms = estimate_ms, 0, 0.0

    def update(self, starts: Sequence[Any], ends: Sequence[Any]) -> None:
        while self.done < len(ends) and ends[self.done].query():
            self.total_ms += starts[self.done].elapsed_time(ends[self.done])
            self.done += 1

    def projected_ms(self, enqueued: int) -> float | None:
        per = self.total_ms / self.done if self.done else self.estimate_ms
        if per is None:
            return None
        return self.total_ms + (enqueued - self.done) * per


def _one_call_ms(call: Callable[[], object], runner: Runner) -> float:
    """One call timed with CUDA events on the runner's stream, synchronised: the per-iteration
    estimate a loop is sized with before its own iterations finish."""
    stream = runner.stream or torch.cuda.current_stream()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record(stream)
    call()
    end.record(stream)
    torch.cuda.synchronize()
    return float(start.elapsed_time(end))


def _cuda_loop(
    call: Callable[[], object], runner: Runner, protocol: Protocol, estimate_ms: float | None = None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Device and host-enqueue times (ms) per iteration. It stops once ``min_iterations`` ran and
    ``min_seconds`` of device time is enqueued (``DeviceTime``), or at ``max_iterations`` or
    ``max_seconds`` of wall time."""
    stream = runner.stream or torch.cuda.current_stream()
    starts: list[torch.cuda.Event] = []
    ends: list[torch.cuda.Event] = []
    host: list[int] = []
    device = DeviceTime(estimate_ms)
    budget_ms = protocol.min_seconds * 1e3
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
        device.update(starts, ends)
        projected = device.projected_ms(n)
        enough = projected >= budget_ms if projected is not None else elapsed >= protocol.min_seconds
        if (n >= protocol.min_iterations and enough) or n >= protocol.max_iterations:
            break
        if elapsed >= protocol.max_seconds:
            break
    torch.cuda.synchronize()
    device_ms = tuple(s.elapsed_time(e) for s, e in zip(starts, ends))
    return device_ms, tuple(h / 1e6 for h in host)


_NVML: list[Any] = []  # [pynvml, handle] once looked up; [None] where NVML cannot be used


def sm_clock_mhz() -> int | None:
    """The GPU's current SM clock (NVML ``nvmlDeviceGetClockInfo(NVML_CLOCK_SM)``), None without NVML."""
    if not _NVML:
        _NVML.append(_nvml_device())
    found = _NVML[0]
    if found is None:
        return None
    pynvml, handle = found
    try:
        return int(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM))
    except Exception:  # NVML errors mean "unknown", never a failed case
        return None


def _nvml_device() -> tuple[Any, Any] | None:
    try:
        import pynvml

        pynvml.nvmlInit()  # kept initialised for the process: a clock is read after every block
        handle = nvml_handle(pynvml, torch.cuda.get_device_properties(torch.cuda.current_device()))
    except Exception:
        return None
    return None if handle is None else (pynvml, handle)


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

    warm_up(call, runner, protocol)
    device_ms, host_ms = _cuda_loop(call, runner, protocol)
    return LatencyStats(device_ms, batch, "cuda_events", None, host_ms)


class _NoopRunner(Runner):
    def infer(self, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
        return tuple(inputs)
