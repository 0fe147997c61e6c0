"""The roofline reading: which roof bounds a unit of work and how much of it the unit reaches."""

from __future__ import annotations

import pytest

from ccnbench.roofline.layer_costs import Traffic
from ccnbench.roofline.reading import attainable, read

COMPUTE, MEMORY = 100e9, 10e9  # ridge at 10 FLOP/B


def test_below_the_ridge_a_unit_is_read_against_memory() -> None:
    reading = read(Traffic(flops=4_000_000, bytes=1_000_000), 1e-3, COMPUTE, MEMORY)
    assert reading.bound == "memory" and reading.intensity == 4.0
    # 1 GB/s over a 10 GB/s roof, and the same as achieved over attainable FLOP/s.
    assert reading.of_roof == pytest.approx(0.1)
    assert reading.of_roof == pytest.approx(reading.flops_per_second / attainable(4.0, COMPUTE, MEMORY))


def test_above_the_ridge_it_is_read_against_its_runtimes_gemm() -> None:
    reading = read(Traffic(flops=50_000_000, bytes=1_000_000), 1e-3, COMPUTE, MEMORY)
    assert reading.bound == "compute" and reading.of_roof == pytest.approx(0.5)
    assert reading.short == "50% cmp"


def test_a_layer_without_flops_still_has_a_reading() -> None:
    reading = read(Traffic(flops=0, bytes=5_000_000), 1e-3, COMPUTE, MEMORY)
    assert reading.bound == "memory" and reading.of_roof == pytest.approx(0.5)
    assert reading.short == "50% mem"


def test_nothing_is_read_without_time_bytes_or_roofs() -> None:
    assert read(Traffic(1, 0), 1e-3, COMPUTE, MEMORY) is None
    assert read(Traffic(1, 1), 0.0, COMPUTE, MEMORY) is None
    assert read(Traffic(1, 1), 1e-3, 0.0, MEMORY) is None
