"""Statistics on synthetic contests: known ratios, known noise, known between-process spread."""

import numpy as np
import pytest

from ccnbench import stats
from ccnbench.timing import Block, LatencyStats


def _pair(ratio, noise=0.05, processes=3, rounds=20, process_sd=0.0, seed=0, per_block=20):
    """Two members of one contest: ``a`` is ``ratio`` times slower than ``b`` in expectation.

    Each round has a shared drift (it cancels in a paired ratio), each block its own noise
    (CV ``noise``), and each process moves each member by its own factor (sd ``process_sd``).
    """
    rng = np.random.default_rng(seed)
    blocks = {"a": [], "b": []}
    for p in range(processes):
        offsets = {m: rng.normal(0, process_sd) for m in blocks}
        for r in range(rounds):
            drift = rng.normal(0, 0.2)
            for name, base in (("a", ratio), ("b", 1.0)):
                level = base * np.exp(drift + offsets[name] + rng.normal(0, noise))
                samples = tuple(level * np.exp(rng.normal(0, 0.02, per_block)))
                blocks[name].append(Block(p, r, samples))
    return tuple(LatencyStats.from_blocks(blocks[m], 1, "perf_counter") for m in ("a", "b"))


def test_an_a_a_pair_is_a_tie():
    a, b = _pair(1.0)
    ratio = stats.paired_ratio(a, b)
    assert ratio.tie and ratio.low < 1 < ratio.high
    assert ratio.relative_half_width < 0.05


def test_a_thirty_percent_difference_is_resolved():
    a, b = _pair(1.3)
    ratio = stats.paired_ratio(a, b)
    assert not ratio.tie and ratio.contains(1.3)
    assert ratio.low > 1.2
    assert ratio.p_value is not None and ratio.p_value < 1e-3
    back = stats.paired_ratio(b, a)
    assert back.value == pytest.approx(1 / ratio.value)


def test_pairing_cancels_drift_that_an_unpaired_median_keeps():
    a, b = _pair(1.1, noise=0.02)
    paired = stats.paired_ratio(a, b)
    unpaired = stats.median_interval(a).relative_half_width
    assert paired.relative_half_width < unpaired / 3  # the shared 20 % drift cancels


@pytest.mark.parametrize("process_sd", [0.0, 0.05])
def test_intervals_cover_the_true_ratio(process_sd):
    hits = 0
    trials = 60
    for seed in range(trials):
        a, b = _pair(1.2, noise=0.05, processes=4, rounds=12, process_sd=process_sd, seed=seed)
        hits += stats.paired_ratio(a, b).contains(1.2)
    # A nominal 95 % interval: allow for the few processes and the finite number of trials.
    assert hits / trials >= 0.85


def test_between_process_spread_widens_the_interval():
    narrow = stats.paired_ratio(*_pair(1.2, process_sd=0.0, seed=3))
    wide = stats.paired_ratio(*_pair(1.2, process_sd=0.1, seed=3))
    assert wide.relative_half_width > 2 * narrow.relative_half_width


def test_results_are_deterministic():
    a, b = _pair(1.2, seed=7)
    assert stats.paired_ratio(a, b) == stats.paired_ratio(a, b)
    assert stats.median_interval(a) == stats.median_interval(a)


def test_median_interval_and_noise_follow_the_blocks():
    a, _ = _pair(2.0, noise=0.0, processes=1, rounds=30)
    interval = stats.median_interval(a)
    assert interval.contains(float(np.median([blk.median for blk in a.blocks])))
    assert a.noise == pytest.approx(0.2, rel=0.35)  # the rounds' shared drift is 20 %
    assert stats.noisy(a)


def test_cases_without_blocks_have_no_interval():
    plain = LatencyStats((1.0, 1.1, 0.9), 1, "perf_counter")
    assert stats.median_interval(plain) is None and stats.paired_ratio(plain, plain) is None
    assert plain.noise is None and not stats.noisy(plain)


def test_interval_formatting_and_inverse():
    interval = stats.Interval(1.84, 1.79, 1.90)
    assert interval.format() == "1.84× [1.79, 1.90]"
    assert interval.inverse().low == pytest.approx(1 / 1.90)
