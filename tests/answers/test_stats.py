"""Statistics on synthetic contests: known ratios, known noise, known between-process spread."""

import math
from types import SimpleNamespace

import numpy as np
import pytest

from ccnbench.answers import stats
from ccnbench.measure.timing import Block, LatencyStats


def _pair(ratio, noise=0.05, processes=3, rounds=20, process_spread=0.0, seed=0, per_block=20, shared_sd=0.0):
    """Two members of one contest: ``a`` is ``ratio`` times slower than ``b`` in expectation.

    Each round has a shared drift, each block its own noise (CV ``noise``; noise only adds time),
    each process moves both members by one factor (sd ``shared_sd``: a slow minute of the host)
    and each member by its own (uniform in ±``process_spread``; beyond ±0.07 a member's process
    could sit over 15 % above its fastest one and be left out as disturbed).
    """
    rng, host = np.random.default_rng(seed), np.random.default_rng(seed + 1)
    blocks = {"a": [], "b": []}
    for p in range(processes):
        shared = host.normal(0, shared_sd)
        offsets = {m: shared + rng.uniform(-process_spread, process_spread) for m in blocks}
        for r in range(rounds):
            drift = abs(rng.normal(0, 0.2))  # a slow round of the host: noise only adds time
            for name, base in (("a", ratio), ("b", 1.0)):
                level = base * np.exp(drift + offsets[name] + abs(rng.normal(0, noise)))
                samples = tuple(level * np.exp(rng.normal(0, 0.02, per_block)))
                blocks[name].append(Block(p, r, samples))
    return tuple(LatencyStats.from_blocks(blocks[m], 1, "perf_counter") for m in ("a", "b"))


def test_an_a_a_pair_is_a_tie():
    a, b = _pair(1.0, noise=0.02)
    ratio = stats.paired_ratio(a, b)
    assert ratio.tie and ratio.low < 1 < ratio.high and stats.verdict(ratio) == "tie"
    assert ratio.relative_half_width < 0.05
    assert ratio.scope == stats.BETWEEN and ratio.processes == 3


def test_a_wide_interval_holding_parity_is_inconclusive_not_a_tie():
    ratio = stats.paired_ratio(*_pair(1.0, noise=0.05, process_spread=0.07, seed=2))
    assert ratio.contains(1.0) and not ratio.tie and stats.verdict(ratio) == "inconclusive"
    assert stats.describe(ratio).endswith(" inconclusive")
    assert "repeats" in stats.resolve_hint(ratio) and "3 processes" in stats.resolve_hint(ratio)


def test_a_tie_is_two_one_sided_tests_on_the_90_percent_interval():
    """Equivalence at 5 % a side: the 90 % interval must lie inside the margin, the 95 % one need not."""
    offsets = [-0.066, -0.033, 0.0, 0.033, 0.066]  # five processes around 1.04x, rounds alike
    groups = {p: [math.log(1.04) + offsets[p] + 0.001 * r for r in range(6)] for p in range(5)}
    ratio = stats.log_interval(groups)
    assert ratio.low < ratio.tie_low < ratio.value < ratio.tie_high < ratio.high
    assert ratio.high > 1.10 >= ratio.tie_high and stats.verdict(ratio) == "tie"
    assert "90% interval [" in stats.tie_evidence(ratio) and stats.tie_evidence(ratio).endswith("inside ±10%")
    # inverted, the tie bounds swap with the others: still a tie, from the other side
    assert stats.verdict(ratio.inverse()) == "tie" and ratio.inverse().tie_low == 1 / ratio.tie_high
    # one process: the same rule on its rounds' interval
    one = stats.log_interval({0: [math.log(1.02) + 0.02 * ((r % 3) - 1) for r in range(8)]})
    assert one.scope == stats.WITHIN and one.low < one.tie_low and one.tie_high < one.high


def test_verdict_against_the_equivalence_margin():
    def v(low, high):
        return stats.verdict(stats.Interval((low * high) ** 0.5, low, high))

    assert v(0.92, 1.09) == "tie" and v(1.01, 1.09) == "tie"  # inside ±10 %, even if not parity
    assert v(0.90, 1.04) == "inconclusive" and v(0.97, 1.11) == "inconclusive"
    assert v(1.06, 1.30) == "slower" and v(0.5, 0.9) == "faster"
    # another margin: the same interval is a tie at 10 % and "slower" at 5 %
    assert stats.verdict(stats.Interval(1.07, 1.05, 1.09)) == "tie"
    assert stats.verdict(stats.Interval(1.07, 1.05, 1.09), margin=0.05) == "slower"
    assert stats.verdict(stats.Interval(1.5, math.nan, math.nan)) == "inconclusive"  # not computable
    assert stats.verdict(stats.Interval(1.0, math.nan, math.nan, scope=stats.UNPAIRED)) == "unpaired"
    assert stats.verdict(None) == "unpaired"


def test_a_material_verdict_needs_the_gap_shown_beyond_the_margin():
    """Where a ratio decides between a simpler format (in a tie) and a faster one, "slower" must
    mean beyond the margin: an interval across its edge is neither a tie nor a reason to ship."""

    def v(value, low, high, tie_low, tie_high, material):
        return stats.verdict(
            stats.Interval(value, low, high, tie_low=tie_low, tie_high=tie_high), material=material
        )

    edge = (1.09, 1.02, 1.16, 1.04, 1.14)  # slower than parity, 90 % interval across 1.10
    assert v(*edge, material=False) == "slower" and v(*edge, material=True) == "inconclusive"
    beyond = (1.30, 1.15, 1.47, 1.18, 1.43)
    assert v(*beyond, material=True) == "slower"
    inside = (1.04, 1.01, 1.07, 1.02, 1.06)  # a tie either way: shown inside the margin
    assert v(*inside, material=True) == "tie" == v(*inside, material=False)
    faster_edge = tuple(1 / x for x in (1.09, 1.16, 1.02, 1.14, 1.04))
    assert v(*faster_edge, material=False) == "faster" and v(*faster_edge, material=True) == "inconclusive"
    wide = (1.0, 0.8, 1.25, 0.85, 1.18)
    assert v(*wide, material=True) == "inconclusive" == v(*wide, material=False)


def test_a_thirty_percent_difference_is_resolved():
    a, b = _pair(1.3)
    ratio = stats.paired_ratio(a, b)
    assert not ratio.tie and ratio.contains(1.3)
    assert ratio.low > 1.2
    assert ratio.p_value is not None and ratio.p_value < 0.01
    back = stats.paired_ratio(b, a)
    assert back.value == pytest.approx(1 / ratio.value)


def test_pairing_by_process_cancels_a_slow_process_that_an_unpaired_median_keeps():
    a, b = _pair(1.1, noise=0.02, shared_sd=0.3)
    steady_a, steady_b = _pair(1.1, noise=0.02)  # the same draws, without the slow processes
    # a slow process either cancels in its own ratio or, over 15 % slow, is left out as disturbed
    assert stats.paired_ratio(a, b).value == pytest.approx(
        stats.paired_ratio(steady_a, steady_b).value, rel=0.01
    )
    assert stats.paired_ratio(a, b).contains(1.1)
    assert (
        stats.median_interval(a).relative_half_width
        > 1.5 * stats.median_interval(steady_a).relative_half_width
    )


def _contended(share_of_rounds, rng, rounds=10, per_block=10):
    """One process of a contest where ``a`` is 1.05x ``b``, and ``share_of_rounds`` of its rounds
    fall in a neighbour's burst that slows ``a`` 1.5x and ``b`` 1.3x (noise only adds time, and
    unequally: memory-bound ONNX Runtime more than OpenVINO)."""
    blocks = {"a": [], "b": []}
    for r in range(rounds):
        burst = rng.random() < share_of_rounds
        for name, level, slowed in (("a", 1.05, 1.5), ("b", 1.0, 1.3)):
            calls = level * (slowed if burst else 1.0) * np.exp(np.abs(rng.normal(0, 0.01, per_block)))
            blocks[name].append(Block(0, r, tuple(calls)))
    return blocks


def test_bursts_move_a_median_of_paired_rounds_but_not_the_fastest_call_ratio():
    """Why a process's unit is its fastest-call ratio: bursts hit a share of a process's rounds that
    differs from process to process. The median of paired round ratios follows that share; each
    member's fastest call is taken between bursts."""
    rng = np.random.default_rng(0)
    blocks = {"a": [], "b": []}
    medians_of_rounds = []
    for p, share in enumerate((0.1, 0.6, 0.3, 0.7, 0.2)):
        one = _contended(share, rng)
        for name in blocks:
            blocks[name] += [Block(p, b.round, b.samples_ms) for b in one[name]]
        ratios = [np.log(x.median / y.median) for x, y in zip(one["a"], one["b"])]
        medians_of_rounds.append(float(np.median(ratios)))
    a, b = (LatencyStats.from_blocks(blocks[m], 1, "perf_counter") for m in ("a", "b"))
    units = stats.paired_fastest(a, b)
    assert np.std(list(units.values()), ddof=1) < np.std(medians_of_rounds, ddof=1) / 3
    ratio = stats.paired_ratio(a, b)
    assert ratio.contains(1.05) and ratio.relative_half_width < 0.02 and ratio.processes == 5


@pytest.mark.parametrize("process_spread", [0.0, 0.07])
def test_intervals_cover_the_true_ratio(process_spread):
    hits = 0
    trials = 60
    for seed in range(trials):
        a, b = _pair(1.2, noise=0.05, processes=4, rounds=12, process_spread=process_spread, seed=seed)
        hits += stats.paired_ratio(a, b).contains(1.2)
    assert hits / trials >= 0.9  # 60 trials of a 95 % interval


def _coverage(
    k, process_sd, round_sd=0.05, rounds=10, datasets=2000, seed=0, outliers=0.0, floor=None, confidence=0.95
):
    """Share of ``datasets`` simulated contests (K processes with a known between-process spread,
    ``rounds`` paired log ratios each, a share ``outliers`` of them off by ±0.4 in log, as a slow
    block reads) whose 95 % interval covers the true ratio, computed by the same vectorised core
    ``log_interval`` uses, with its floor (``stats.floor_se``, or ``floor``), and the median width."""
    rng = np.random.default_rng(seed + 100 * k)
    truth = math.log(1.2)
    logs = (
        truth + rng.normal(0, process_sd, (datasets, k, 1)) + rng.normal(0, round_sd, (datasets, k, rounds))
    )
    hit = rng.random(logs.shape) < outliers
    logs = logs + hit * rng.choice([-0.4, 0.4], logs.shape)
    medians = np.median(logs, axis=2)
    ses = (floor or stats.floor_se)(logs)
    _, low, high, _ = stats.process_interval(medians, ses, k * rounds, confidence)
    return float(np.mean((low <= truth) & (truth <= high))), float(np.median(high - low))


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("process_sd", [0.0, 0.03, 0.15])
def test_95_percent_intervals_cover_95_percent_with_few_processes(k, process_sd):
    coverage, width = _coverage(k, process_sd)
    assert coverage >= 0.93, (k, process_sd, coverage)
    # honest, not useless: from three processes on, without spread between them, about ±4 %
    if process_sd == 0.0 and k >= 3:
        assert width < 0.1


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("process_sd", [0.0, 0.03, 0.15])
def test_the_tie_test_s_90_percent_intervals_cover_90_percent(k, process_sd):
    """Each one-sided test of a tie then errs at most 5 % of the time."""
    coverage, _ = _coverage(k, process_sd, confidence=stats.TIE_CONFIDENCE)
    assert coverage >= 0.88, (k, process_sd, coverage)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_slow_blocks_keep_coverage_and_do_not_widen_the_floor(k):
    """15 % of rounds off by ±50 %: the robust floor still covers 95 %, and at K >= 3 without
    spread between processes its interval is narrower than a standard-deviation floor's."""
    coverage, width = _coverage(k, 0.0, rounds=6, outliers=0.15)
    assert coverage >= 0.93, (k, coverage)

    def sd_floor(logs):
        return math.sqrt(math.pi / 2) * logs.std(axis=2, ddof=1) / math.sqrt(logs.shape[2])

    _, sd_width = _coverage(k, 0.0, rounds=6, outliers=0.15, floor=sd_floor)
    if k >= 3:
        assert width < 0.8 * sd_width, (k, width, sd_width)


def test_coverage_through_the_public_path_at_k_2():
    hits = sum(
        stats.paired_ratio(
            *_pair(1.2, noise=0.03, processes=2, rounds=6, process_spread=0.05, seed=s)
        ).contains(1.2)
        for s in range(100)
    )
    assert hits >= 93


def test_one_process_is_labelled_within_process():
    a, b = _pair(1.2, processes=1, rounds=8)
    ratio = stats.paired_ratio(a, b)
    assert ratio.scope == stats.WITHIN and ratio.processes == 1 and ratio.computable
    assert ratio.format().endswith("within-process") and "within-process" in stats.describe(ratio)
    assert ratio.p_value is None  # no test across processes with one process
    few = stats.paired_ratio(*_pair(1.2, processes=1, rounds=2))
    assert not few.computable and "not computable" in few.format() and few.relative_half_width == math.inf
    assert stats.verdict(few) == "inconclusive"
    identical = stats.log_interval({0: [0.1] * 8})
    assert identical.scope == stats.WITHIN and not identical.computable  # never a zero-width interval


def test_p_value_uses_processes_not_pooled_rounds():
    """Three processes that disagree: pooling their 60 rounds would call it certain; per process it is not."""
    a, b = _pair(1.05, noise=0.01, processes=3, rounds=20, process_spread=0.07, seed=5)
    ratio = stats.paired_ratio(a, b)
    assert ratio.p_value is not None and ratio.p_value > 0.01


def test_between_process_spread_widens_the_interval():
    narrow = stats.paired_ratio(*_pair(1.2, seed=3))
    wide = stats.paired_ratio(*_pair(1.2, process_spread=0.07, seed=3))
    assert wide.relative_half_width > 2 * narrow.relative_half_width


def test_median_interval_lies_around_its_own_point():
    for seed in range(20):
        a, _ = _pair(2.0, noise=0.1, processes=2, rounds=3, process_spread=0.2, seed=seed)
        interval = stats.median_interval(a)
        assert 0 < interval.low <= interval.value <= interval.high


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
    assert stats.Interval(1.84, math.nan, math.nan, scope=stats.UNPAIRED).format() == "1.84× unpaired"
    assert stats.Interval(1.84, math.nan, math.nan).to_dict()["low"] is None  # JSON has no NaN


def _case(latency, contest="c1", run="r", status="ok"):
    return SimpleNamespace(status=status, contest=contest, run=run, latency=latency)


def test_cases_pair_only_inside_one_contest_of_one_run():
    a, b = _pair(1.3, noise=0.02)
    paired = stats.pair(_case(a), _case(b))
    assert paired.scope == stats.BETWEEN and paired.contains(1.3)
    units = stats.process_ratios(_case(a), _case(b))
    assert len(units) == 3 and all(abs(math.exp(u) / 1.3 - 1) < 0.05 for u in units)
    fastest = a.fastest / b.fastest  # unpaired: the ratio of their fastest calls
    apart = (
        (_case(a), _case(b, contest="c2")),  # two contests
        (_case(a), _case(b, run="r2")),  # the same contest id in another run
        (_case(a, contest=None), _case(b, contest=None)),  # timed outside any contest
    )
    for num, den in apart:
        unpaired = stats.pair(num, den)
        assert unpaired.scope == stats.UNPAIRED and unpaired.value == pytest.approx(fastest)
        assert stats.process_ratios(num, den) == ()
    assert stats.pair(_case(a), _case(b, status="failed")) is None
    assert stats.process_ratios(_case(a), _case(b, status="failed")) == ()


def test_a_shift_across_processes_is_resolved_only_beyond_their_spread():
    base, new = (0.0, 0.01, -0.01), (0.3, 0.31, 0.29)
    shift, half = stats.shift_interval(base, new)
    assert shift == pytest.approx(0.3) and half < 0.05
    # a pool of noisier cases widens the test; a quieter one does not narrow it
    assert stats.shift_interval(base, new, (0.1, 20))[1] > 0.3 > half
    assert stats.shift_interval(base, new, (1e-9, 20))[1] == half
    assert stats.shift_interval((0.0,), (0.3,)) is None  # one process a side: no variance at all
    assert stats.shift_interval((0.0,), (0.3,), (0.01, 10)) is not None
    # 2+2 processes a little further apart than the pool's (not by an F-test): the pool judges,
    # with its 14 degrees of freedom, not t(0.975, 2) = 4.3 on the case's own two
    _, pooled_half = stats.shift_interval((0.0, 0.04), (0.3, 0.34), (0.0005, 14))
    assert pooled_half == pytest.approx(2.145 * math.sqrt(0.0005), rel=0.01)


def _disturbed(slow_a, slow_b, processes=4, disturbed=(2,), rounds=6):
    """``a`` 1 ms, ``b`` 2 ms (ratio 0.5); in the ``disturbed`` processes another job holds the core
    throughout, slowing every call of ``a`` by ``slow_a`` and of ``b`` by ``slow_b``."""
    rng = np.random.default_rng(0)
    blocks = {"a": [], "b": []}
    for p in range(processes):
        for r in range(rounds):
            for name, level, slowed in (("a", 1.0, slow_a), ("b", 2.0, slow_b)):
                level *= slowed if p in disturbed else 1.0
                calls = level * np.exp(np.abs(rng.normal(0, 0.01, 10)) + 0.002 * ((r + p) % 3))
                blocks[name].append(Block(p, r, tuple(calls)))
    return tuple(LatencyStats.from_blocks(blocks[m], 1, "perf_counter") for m in ("a", "b"))


def test_a_process_that_ran_disturbed_throughout_is_left_out():
    """One process of four where another job slowed ``a`` 1.5x and ``b`` 1.1x throughout: its
    ratio is the disturbance's (1.36x off), so it counts neither in the ratio nor in ``fastest``."""
    a, b = _disturbed(1.5, 1.1)
    assert set(a.calm_processes()) == {0, 1, 3} and set(b.calm_processes()) == {0, 1, 2, 3}
    assert set(stats.paired_fastest(a, b)) == {0, 1, 3}
    ratio = stats.paired_ratio(a, b)
    assert ratio.processes == 3 and ratio.value == pytest.approx(0.5, rel=0.01) and ratio.contains(0.5)
    assert a.fastest == pytest.approx(1.0, rel=0.01)  # not pulled towards the disturbed 1.5 ms
    # a disturbance under 15 % is not told from noise: every process counts
    assert stats.paired_ratio(*_disturbed(1.1, 1.0)).processes == 4


def test_one_calm_process_of_two_keeps_the_spread_of_both_in_its_interval():
    a, b = _disturbed(1.5, 1.2, processes=2, disturbed=(1,))
    ratio = stats.paired_ratio(a, b)
    assert (
        ratio.processes == 1 and ratio.scope == stats.WITHIN and ratio.value == pytest.approx(0.5, rel=0.01)
    )
    calm_a, calm_b = (
        LatencyStats.from_blocks([x for x in m.blocks if x.process == 0], 1, "perf_counter") for m in (a, b)
    )
    alone = stats.paired_ratio(calm_a, calm_b)  # its rounds alone would claim about ±1 %
    assert alone.relative_half_width < 0.02 < 1 < ratio.high / ratio.low - 1  # t(0.975, 1) over both


def test_the_fastest_call_s_interval_is_over_its_calm_processes():
    a, b = _pair(1.3, noise=0.02, processes=4, process_spread=0.05, seed=5)
    for latency in (a, b):
        interval = stats.fastest_interval(latency)
        assert interval.value == pytest.approx(latency.fastest)  # its own point is the fastest call
        assert interval.low < latency.fastest < interval.high and interval.scope == stats.BETWEEN
        # the t-interval over the calm processes' log fastest calls, computed here by hand
        logs = np.log(list(latency.calm_processes().values()))
        k = len(logs)
        half = stats._student_t().ppf(0.975, k - 1) * logs.std(ddof=1) / math.sqrt(k)
        assert (interval.low, interval.high) == pytest.approx(
            (math.exp(logs.mean() - half), math.exp(logs.mean() + half))
        )
        assert interval.processes == k == latency.processes


def test_the_fastest_call_has_no_interval_from_one_calm_process():
    one, _ = _pair(1.3, processes=1)
    assert one.processes == 1 and stats.fastest_interval(one) is None
    # Two processes, one disturbed throughout: one calm process is all there is.
    disturbed, _ = _disturbed(1.5, 1.2, processes=2, disturbed=(1,))
    assert len(disturbed.calm_processes()) == 1 and stats.fastest_interval(disturbed) is None
    assert stats.fastest_interval(LatencyStats((1.0, 1.1), 1, "perf_counter")) is None
    assert stats.fastest_interval(None) is None
