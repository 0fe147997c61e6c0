"""Statistics from raw samples, and the protocol's iteration and time rules (no speed thresholds)."""

import gc
import time

import numpy as np
import pytest
import torch

from ccnbench.backends.base import Runner, Target
from ccnbench.measure.samples import Block, LatencyStats
from ccnbench.measure.timing import DeviceTime, Protocol, bound_call, measure, time_block, warm_up


def test_statistics_on_synthetic_samples():
    samples = [float(i) for i in range(1, 101)]  # 1..100 ms
    stats = LatencyStats(tuple(samples), batch=4, clock="perf_counter", flops_per_sample=10**9)
    assert stats.min == 1 and stats.max == 100 and stats.iterations == 100
    assert stats.mean == pytest.approx(50.5)
    assert stats.median == pytest.approx(50.5)
    # Linear interpolation between order statistics (numpy's default): p90 = 1 + 0.9 * 99.
    assert stats.p90 == pytest.approx(90.1)
    assert stats.p95 == pytest.approx(95.05)
    assert stats.p99 == pytest.approx(99.01)
    assert stats.std == pytest.approx(np.std(samples, ddof=1))
    assert stats.throughput == pytest.approx(4 / 0.0505)  # samples per second at the median
    assert stats.gflops == pytest.approx(4 * 1e9 / 0.0505 / 1e9)


def test_statistics_are_order_independent_and_round_trip():
    rng = np.random.default_rng(0)
    samples = tuple(float(x) for x in rng.lognormal(0, 0.3, 257))
    a = LatencyStats(samples, 1, "perf_counter")
    b = LatencyStats(tuple(reversed(samples)), 1, "perf_counter")
    assert a.summary() == b.summary()
    again = LatencyStats.from_dict(a.to_dict())
    assert again.median == pytest.approx(a.median, abs=1e-6) and again.iterations == 257


def test_from_ns_converts_to_ms_and_empty_is_an_error():
    assert LatencyStats.from_ns([1_500_000, 2_500_000], 1).median == pytest.approx(2.0)
    with pytest.raises(ValueError):
        LatencyStats((), 1, "perf_counter")


class CountingRunner(Runner):
    """Counts calls and optionally sleeps: stands in for a backend."""

    def __init__(self, sleep: float = 0.0) -> None:
        super().__init__(Target("fake", "cpu"), ("y",))
        self.calls, self.sleep, self.seen = 0, sleep, set()

    def infer(self, inputs):
        self.calls += 1
        self.seen.add(inputs[0].data_ptr())
        if self.sleep:
            time.sleep(self.sleep)
        return (inputs[0],)


def test_iteration_minimums_are_exact_when_time_minimums_are_zero():
    runner = CountingRunner()
    protocol = Protocol(warmup_iterations=7, warmup_seconds=0, min_iterations=11, min_seconds=0)
    m = measure(runner, [torch.ones(3, 2)], protocol)
    assert m.latency.warmup_iterations == 7 and m.latency.iterations == 11
    assert runner.calls == 18
    assert len(runner.seen) == 1  # one staged input, reused: staging is outside the loop
    assert m.latency.batch == 3 and m.latency.clock == "perf_counter"


def test_time_minimum_extends_measurement_beyond_min_iterations():
    runner = CountingRunner(sleep=0.002)
    protocol = Protocol(warmup_iterations=1, warmup_seconds=0, min_iterations=2, min_seconds=0.05)
    stats = measure(runner, [torch.ones(1)], protocol).latency
    assert stats.iterations > 2
    assert sum(stats.samples_ms) >= 50  # measured for at least min_seconds of samples
    assert stats.min >= 2.0  # every sample includes the 2 ms call


def test_caps_stop_a_slow_target():
    runner = CountingRunner(sleep=0.01)
    protocol = Protocol(
        warmup_iterations=1, warmup_seconds=0, min_iterations=1000, min_seconds=0, max_seconds=0.05
    )
    stats = measure(runner, [torch.ones(1)], protocol).latency
    assert stats.iterations < protocol.min_iterations  # max_seconds stopped it early
    assert runner.calls == 1 + stats.iterations  # every call but the warm-up is a sample


def test_the_garbage_collector_is_off_inside_the_loops_and_restored_after():
    class Recording(CountingRunner):
        def infer(self, inputs):
            self.gc_on.append(gc.isenabled())
            return super().infer(inputs)

    runner = Recording()
    runner.gc_on = []
    assert gc.isenabled()
    measure(
        runner,
        [torch.ones(1)],
        Protocol(warmup_iterations=2, warmup_seconds=0, min_iterations=3, min_seconds=0),
    )
    assert runner.gc_on == [False] * 5 and gc.isenabled()


def test_warm_up_runs_the_protocols_iterations_then_synchronises_a_cuda_runner(monkeypatch):
    events = []

    class Cuda(CountingRunner):
        def infer(self, inputs):
            events.append("call")
            return super().infer(inputs)

    runner = Cuda()
    runner.target = Target("fake", "cuda")
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: events.append("sync"))
    call = bound_call(runner, [torch.ones(1)])
    assert warm_up(call, runner, Protocol(warmup_iterations=4, warmup_seconds=0)) == 4
    assert events == ["call"] * 4 + ["sync"]  # waited for once, after the last call
    events.clear()
    assert (
        warm_up(
            bound_call(CountingRunner(), [torch.ones(1)]),
            CountingRunner(),
            Protocol(warmup_iterations=2, warmup_seconds=0),
        )
        == 2
    )
    assert events == []  # a CPU runner is never synchronised


def test_a_cpu_block_discards_its_first_call_and_keeps_its_place():
    runner = CountingRunner()
    block = time_block(bound_call(runner, [torch.ones(1)]), runner, seconds=0, process=2, round_=5)
    assert (block.process, block.round) == (2, 5)
    assert len(block.samples_ms) == 2 and runner.calls == 3  # two kept, the first call run but not kept
    slow = CountingRunner(sleep=0.002)
    block = time_block(bound_call(slow, [torch.ones(1)]), slow, seconds=0.02)
    assert sum(block.samples_ms) >= 20 and slow.calls == len(block.samples_ms) + 1


def test_a_call_that_filled_its_last_block_is_timed_once_without_a_discarded_call():
    slow = CountingRunner(sleep=0.03)
    call = bound_call(slow, [torch.ones(1)])
    block = time_block(call, slow, seconds=0.02, previous_ms=31.0)
    assert len(block.samples_ms) == 1 and slow.calls == 1 and block.samples_ms[0] >= 30
    # a shorter previous block (or none, the first round) keeps the discarded call, and a discarded
    # call that filled the block is followed by one kept call
    block = time_block(call, slow, seconds=0.02, previous_ms=19.0)
    assert len(block.samples_ms) == 1 and slow.calls == 1 + 2
    quick = CountingRunner(sleep=0.004)
    block = time_block(bound_call(quick, [torch.ones(1)]), quick, seconds=0.02, previous_ms=50.0)
    assert (
        quick.calls == len(block.samples_ms) >= 4
    )  # told it was long: nothing discarded, the block still 20 ms
    quick.calls = 0
    block = time_block(bound_call(quick, [torch.ones(1)]), quick, seconds=0.02)
    assert quick.calls == 1 + len(block.samples_ms) and len(block.samples_ms) >= 4


class FakeEvent:
    """A CUDA end event that completes when the fake device has done its work."""

    def __init__(self, device: dict, index: int, ms: float) -> None:
        self.device, self.index, self.ms = device, index, ms

    def query(self) -> bool:
        return self.index < self.device["finished"]

    def elapsed_time(self, end: "FakeEvent") -> float:
        return end.ms


def test_cuda_blocks_are_sized_by_device_time_not_by_the_hosts_clock():
    # 25 ms per iteration (batch 32 on the H200) and a 100 ms budget: the host enqueues in
    # microseconds, so its own clock would let it queue 32 iterations (800 ms) before stopping.
    device = {"finished": 0}
    clock = DeviceTime(estimate_ms=30.0)  # the discarded first call, a little slower
    starts, ends = [], []
    enqueued = 0
    while True:
        starts.append(FakeEvent(device, enqueued, 0.0))
        ends.append(FakeEvent(device, enqueued, 25.0))
        enqueued += 1
        clock.update(starts, ends)
        if clock.projected_ms(enqueued) >= 100:
            break
    assert enqueued == 4  # 4 x 30 ms projected: none had finished yet
    device["finished"] = 2
    clock.update(starts, ends)
    assert clock.done == 2 and clock.total_ms == 50
    assert clock.projected_ms(enqueued) == 100  # finished ones at 25 ms, the rest at their mean
    assert DeviceTime(None).projected_ms(3) is None  # no estimate: the host clock decides


def test_blocks_keep_host_times_and_sm_clock_and_old_files_still_load():
    blocks = [Block(0, r, (1.0, 1.2), (0.1, 0.1), 1980 - 10 * r) for r in range(3)]
    stats = LatencyStats.from_blocks(blocks, 32, "cuda_events")
    assert stats.host_samples_ms == (0.1,) * 6 and stats.host_median == 0.1
    assert stats.sm_clock_mhz == 1970.0  # the median over the blocks
    again = LatencyStats.from_dict(stats.to_dict())
    assert again.blocks == stats.blocks and again.sm_clock_mhz == 1970.0
    assert again.host_samples_ms == stats.host_samples_ms
    old = {"batch": 1, "clock": "perf_counter", "blocks": [[0, 0, [1.0, 2.0]], [0, 1, [1.5]]]}
    loaded = LatencyStats.from_dict(old)
    assert loaded.iterations == 3 and loaded.sm_clock_mhz is None and loaded.host_samples_ms == ()
