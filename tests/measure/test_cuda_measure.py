"""The CUDA half of timing and memory, on any CUDA device (skipped without one).

These check behaviour, not speed: CUDA events time the device work on the runner's own stream
while the host only enqueues, the transfer loop adds the copies, the memory probe sees device
memory whoever allocates it, and the harness's own CUDA overhead is small against what it times.
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
from ccnbench.measure.memory import MemoryProbe
from ccnbench.measure.timing import Protocol, measure, sm_clock_mhz, time_block, timer_overhead_ns

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


def test_a_block_is_sized_by_device_time_when_iterations_are_long():
    runner = _runner(20 * CYCLES)  # ~10 ms of device time per iteration; the host enqueues in us
    staged = [torch.zeros(1, 4, device="cuda")]
    runner.infer(staged)
    torch.cuda.synchronize()
    single = measure(runner, [torch.zeros(1, 4)], PROTOCOL).latency.median
    block = time_block(lambda: runner.infer(staged), runner, 0.05, process=1, round_=2)
    # Sized by the host clock the loop would have queued ~32 iterations; by device time it stops
    # once 50 ms are enqueued (the estimate comes from one discarded, possibly slower, call).
    assert sum(block.samples_ms) <= 50 + 3 * single
    assert len(block.host_ms) == len(block.samples_ms) and (block.process, block.round) == (1, 2)
    assert max(block.host_ms) < single  # the host only enqueued


def test_the_sm_clock_is_recorded_where_nvml_exists():
    pytest.importorskip("pynvml")
    clock = sm_clock_mhz()
    assert clock is not None and 100 < clock < 5000
    stats = measure(_runner(CYCLES), [torch.zeros(1, 4)], PROTOCOL).latency
    assert stats.sm_clock_mhz is not None and stats.summary()["sm_clock_mhz"] == stats.sm_clock_mhz


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
    assert stats.cuda_allocator_peak_delta_bytes >= 256 * 2**20
    # the headline counts the block, and not much else (allocations round to 2 MiB pages)
    assert 256 * 2**20 <= stats.headline_bytes < 288 * 2**20
    del block
    probe.start()  # the freed block goes back to the device before the new baseline
    assert probe.read(uses_torch_allocator=True).cuda_free_drop_bytes < 256 * 2**20


def test_cuda_timer_overhead_is_small_against_the_work_it_times():
    overhead = timer_overhead_ns(device="cuda")
    work = measure(_runner(CYCLES), [torch.zeros(1, 4)], PROTOCOL).latency.median * 1e6  # ns
    assert 0 < overhead < work / 10 and math.isfinite(overhead)


def test_memory_probe_keeps_allocator_peak_above_its_own_baseline():
    earlier = torch.empty(128 * 2**20, dtype=torch.uint8, device="cuda")  # another member's weights
    probe = MemoryProbe("cuda")
    probe.start()
    block = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")
    stats = probe.read(uses_torch_allocator=True)
    assert 64 * 2**20 <= stats.cuda_allocator_peak_delta_bytes < 128 * 2**20
    assert 64 * 2**20 <= stats.headline_bytes < 128 * 2**20  # the earlier member's block is not counted
    del earlier, block


# The same member measured first in one fresh process and later in another must agree. What may
# differ: cuDNN's autotuner picks its algorithms by timing, so two processes can pick different
# ones with different workspaces (a few MiB to tens of MiB for these shapes), and torch's
# allocator reserves in 2 MiB pages and 20 MiB segments. Before the memory pass the member that
# went first read ~240 MiB more on an H200.
ORDER_TOLERANCE = 48 * 2**20


@pytest.mark.slow
def test_a_members_memory_does_not_depend_on_the_order(tmp_path):
    import json
    import subprocess
    import sys
    from dataclasses import replace

    from ccnbench.backends import backend_of, parse_targets
    from ccnbench.backends.onnxruntime import provider_unavailable_reason
    from ccnbench.measure.timing import QUICK
    from ccnbench.run import contest, plan, selection

    protocol = replace(
        QUICK, warmup_iterations=1, warmup_seconds=0, min_rounds=1, contest_seconds=0, repeats=1
    )
    targets = "torch:cuda" + ("" if provider_unavailable_reason("cuda") else ",ort:cuda")
    sources = selection.sources(preset="small", variants="model", layouts_="all", branches="2")
    groups = plan.case_groups(sources, parse_targets(targets), ["fp32"], [1, 8], tmp_path, protocol=protocol)
    match = contest.plan(groups)[0][0]
    for g in groups:  # built here once, as the sweep's parent does
        backend_of(g.target).artifact(g.source, g.target, g.options)
    kept = next(
        i for i, g in enumerate(match.groups) if str(g.target) == "torch:cuda" and g.source.layout == "kept"
    )
    orders = {p: contest.memory_order(match, p) for p in range(16)}
    first = next(p for p, o in orders.items() if o[0] == kept)
    later = next(p for p, o in orders.items() if o.index(kept) >= 1)
    figures = {}
    for process in (first, later):
        task, out = tmp_path / f"task-{process}.json", tmp_path / f"events-{process}.jsonl"
        task.write_text(json.dumps({"contest": match.to_dict(), "process": process}))
        subprocess.run(
            [sys.executable, "-m", "ccnbench.run.worker", str(task), str(out)], check=True, timeout=300
        )
        cases = [json.loads(line)["case"] for line in out.read_text().splitlines() if "case" in line]
        for c in cases:
            assert c["status"] == "ok", c.get("message")
            if c["key"]["target"] == "torch:cuda" and c["key"]["layout"] == "kept":
                figures.setdefault(c["key"]["batch"], []).append(c["memory"])
    for batch, (a, b) in figures.items():
        for field in ("cuda_process_delta_bytes", "cuda_free_drop_bytes", "cuda_allocator_peak_delta_bytes"):
            if a[field] is not None and b[field] is not None:
                assert abs(a[field] - b[field]) <= ORDER_TOLERANCE, (batch, field, a[field], b[field])


def test_the_float64_oracle_on_the_gpu_is_the_same_truth(monkeypatch):
    from ccnbench.models import spec_from_preset
    from ccnbench.source import ModelSource

    source = ModelSource.from_spec(spec_from_preset("small", "model", branches=3), "kept")
    inputs = source.make_inputs(4, 0)
    monkeypatch.setenv("CCNBENCH_ORACLE_DEVICE", "cpu")
    on_cpu = source.oracle(inputs)
    monkeypatch.setenv("CCNBENCH_ORACLE_DEVICE", "cuda")
    on_gpu = source.oracle(inputs)
    for a, b in zip(on_cpu, on_gpu):
        assert b.device.type == "cpu" and b.dtype == torch.float64
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)  # float64 round-off, far below any tolerance
