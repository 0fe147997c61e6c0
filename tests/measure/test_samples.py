"""Per-process figures of a case's samples: percentiles and their range over processes, and the
rates at the fastest call, on hand-built blocks."""

import numpy as np
import pytest

from ccnbench.measure.samples import Block, LatencyStats


def _two_processes() -> LatencyStats:
    # Process 0 calm (1.0-1.9 ms), process 1 under load (2.0-3.8 ms); two rounds each, in any order.
    blocks = [
        Block(1, 0, tuple(2.0 + 0.2 * i for i in range(5))),
        Block(0, 0, tuple(1.0 + 0.1 * i for i in range(5))),
        Block(0, 1, tuple(1.5 + 0.1 * i for i in range(5))),
        Block(1, 1, tuple(3.0 + 0.2 * i for i in range(5))),
    ]
    return LatencyStats.from_blocks(blocks, 4, "perf_counter", flops_per_sample=10**9)


def test_percentiles_by_process_are_each_process_own_samples():
    lat = _two_processes()
    calm = [1.0 + 0.1 * i for i in range(5)] + [1.5 + 0.1 * i for i in range(5)]
    loaded = [2.0 + 0.2 * i for i in range(5)] + [3.0 + 0.2 * i for i in range(5)]
    for q in (50, 99):
        expected = {0: np.percentile(calm, q), 1: np.percentile(loaded, q)}
        assert lat.percentile_by_process(q) == pytest.approx(expected)
    assert lat.median_by_process() == lat.percentile_by_process(50)
    assert lat.p99_by_process() == lat.percentile_by_process(99)
    low, high = lat.percentile_range(50)
    assert (low, high) == pytest.approx((np.median(calm), np.median(loaded)))
    # The figure over all samples lies inside the range over processes.
    assert low <= lat.median <= high and lat.percentile(50) == lat.median and lat.percentile(99) == lat.p99


def test_one_process_or_no_blocks_has_no_range():
    one = LatencyStats.from_blocks([Block(0, r, (1.0, 1.1, 1.3)) for r in range(3)], 1, "perf_counter")
    assert one.percentile_by_process(50) == {0: pytest.approx(1.1)} and one.percentile_range(50) is None
    plain = LatencyStats((1.0, 2.0, 3.0), 1, "perf_counter")
    assert plain.percentile_by_process(50) == {} and plain.percentile_range(99) is None


def test_rates_at_the_fastest_call_beside_the_stored_ones_at_the_median():
    lat = _two_processes()
    # Process 1's fastest call (2.0 ms) lies beyond CALM of process 0's (1.0 ms): it ran disturbed.
    assert lat.calm_processes() == {0: 1.0} and lat.fastest == pytest.approx(1.0)
    assert lat.throughput_at_fastest == pytest.approx(4 / (lat.fastest / 1e3))
    assert lat.gflops_at_fastest == pytest.approx(4 * 1e9 / (lat.fastest / 1e3) / 1e9)
    # results.json keeps what it always stored: the rates at the median.
    summary = lat.summary()
    assert summary["throughput"] == pytest.approx(4 / (lat.median / 1e3))
    assert summary["gflops"] == pytest.approx(4 / (lat.median / 1e3))
    assert "throughput_at_fastest" not in summary
    assert LatencyStats((1.0,), 1, "perf_counter").gflops_at_fastest is None
