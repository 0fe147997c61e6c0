"""The CUDA half of timing and memory, on any CUDA device (skipped without one).

These check behaviour, not speed: CUDA events time the device work on the runner's own stream
while the host only enqueues, the transfer loop adds the copies, the memory probe sees device
memory whoever allocates it, and the harness's own CUDA overhead is a finite positive figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor

from ccnbench.backends.base import Runner, Target
from ccnbench.memory import MemoryProbe
from ccnbench.timing import Protocol, measure, timer_overhead_ns

pytestmark = pytest.mark.gpu

PROTOCOL = Protocol(
    warmup_iterations=3, warmup_seconds=0.0, min_iterations=20, min_seconds=0.0, max_seconds=5
)
CYCLES = 2_000_000  # about a millisecond of device time on current GPUs


@dataclass
class SleepRunner(Runner):
    """Spins the GPU for ``cycles`` clock cycles on its own stream; the host returns at once."""

    cycles: int = CYCLES
    _stream: Any = None

    @property
    def stream(self) -> torch.cuda.Stream | None:
        return self._stream

    def infer(self, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
        self._stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._stream):
            torch.cuda._sleep(self.cycles)
            return (inputs[0] + 1,)


def _runner(cycles: int) -> SleepRunner:
    return SleepRunner(Target("sleep", "cuda"), ("y",), cycles=cycles, _stream=torch.cuda.Stream())


def test_cuda_loop_times_device_work_on_the_runners_stream_not_the_host_enqueue():
    short = measure(_runner(CYCLES), [torch.zeros(1, 4)], PROTOCOL).latency
    long = measure(_runner(4 * CYCLES), [torch.zeros(1, 4)], PROTOCOL).latency
    assert short.clock == "cuda_events" and long.clock == "cuda_events"
    assert short.iterations >= PROTOCOL.min_iterations and all(s > 0 for s in short.samples_ms)
    # Four times the device work reads as clearly more device time ...
    assert long.median > 2 * short.median
    # ... while the host only enqueued it: iterations stay in flight (no sync per iteration).
    assert long.host_median is not None and long.host_median < long.median / 2


def test_transfer_loop_adds_the_copies_to_the_device_time():
    inputs = [torch.randn(64, 1024, 1024)]  # 256 MiB each way
    result = measure(_runner(CYCLES), inputs, PROTOCOL, transfers=True)
    assert result.transfers is not None and result.transfers.clock == "cuda_events"
    assert result.transfers.median > result.latency.median


def test_memory_probe_on_cuda_sees_device_memory_from_any_allocator():
    probe = MemoryProbe("cuda")
    probe.start()
    block = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    stats = probe.read(uses_torch_allocator=True)
    assert stats.device == "cuda"
    assert stats.cuda_free_drop_bytes >= 256 * 2**20
    assert stats.cuda_peak_allocated_bytes >= 256 * 2**20
    assert stats.headline_bytes == stats.cuda_free_drop_bytes
    del block
    probe.start()  # the freed block goes back to the device before the new baseline
    assert probe.read(uses_torch_allocator=True).cuda_free_drop_bytes < 256 * 2**20


def test_cuda_timer_overhead_is_a_finite_positive_figure():
    overhead = timer_overhead_ns(device="cuda")
    assert overhead > 0 and math.isfinite(overhead)
