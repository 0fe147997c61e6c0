"""Derived numbers every view shares: pairing only inside one contest of one run, A-A calibration."""

import re
from dataclasses import replace

import pytest

from ccnbench import results
from ccnbench.answers import derived, stats
from ccnbench.measure.samples import Block, LatencyStats

from helpers import FIXTURES, PAIR, ROOT


def test_h200_runs_never_pair_across_runs_even_with_clashing_contest_ids():
    eager = results.load(FIXTURES / "gpu-h200-2026-11-30" / "results-1-eager.json")
    graphs = results.load(FIXTURES / "gpu-h200-2026-11-30" / "results-2-graphs.json")
    # The old files give both runs' contests the same ids: that is what made them pair before.
    assert {c.contest for c in eager.cases} & {c.contest for c in graphs.cases}
    cases = derived.all_cases([eager, graphs])
    assert {c.run for c in cases} == {eager.tag, graphs.tag}
    by_key = derived.index(cases)
    checked = 0
    for case in cases:
        for view, other_key in (
            (derived.speedup_interval, derived.reference_key(case.key)),
            (derived.merged_interval, replace(case.key, layout="kept")),
        ):
            interval = view(by_key, case)
            if interval is None:
                continue
            other = by_key[other_key]
            same_contest = other.run == case.run and other.contest == case.contest
            assert (interval.scope != stats.UNPAIRED) == same_contest, case.key
            checked += 1
    assert checked > 30
    graph = [c for c in cases if c.key.target == "compile-graphs:cuda" and c.status == "ok"]
    assert len(graph) == 6
    for case in graph:
        vs_eager = derived.speedup_interval(by_key, case)
        assert vs_eager.scope == stats.UNPAIRED and "unpaired" in stats.describe(vs_eager)
        assert derived.merged_interval(by_key, case) is None or case.key.layout == "merged"
    # one process per contest on the GPU: its paired intervals say so
    merged = [
        derived.merged_interval(by_key, c) for c in cases if c.key.layout == "merged" and c.status == "ok"
    ]
    assert {i.scope for i in merged if i is not None} == {stats.WITHIN}


def test_a_a_cross_coverage_of_the_two_amd_runs():
    """Run b's paired ratios fall inside run a's 95 % intervals (and the other way round) at
    least 78 % of the time: the intervals are not too narrow (the two-stage bootstrap gave 72.5 %)."""
    a = results.load(FIXTURES / "ci-quick-amd-epyc" / "a.json")
    b = results.load(FIXTURES / "ci-quick-amd-epyc" / "b.json")
    inside, compared = 0, 0
    for first, second in ((a, b), (b, a)):
        i, n, misses = derived.cross_coverage(first, second)
        assert n == 40 and len(misses) == n - i
        inside, compared = inside + i, compared + n
    assert inside / compared >= 0.78


def test_all_cases_keeps_the_run_and_one_run_pairs():
    from helpers import contest_cases, run

    cases = contest_cases({("torch:cpu", "kept"): 2.0, ("ort:cpu", "kept"): 1.0})
    first, second = run(*cases, run_id="first"), run(*cases, run_id="second")
    merged = derived.all_cases([first])
    by_key = derived.index(merged)
    ort = next(c for c in merged if c.key.target == "ort:cpu")
    assert ort.run == first.tag and derived.speedup_interval(by_key, ort).scope == stats.BETWEEN
    # the reference from one run, the format from another: never paired
    mixed = derived.all_cases([run(cases[0], run_id="first"), run(cases[1], run_id="second")])
    by_key = derived.index(mixed)
    ort = next(c for c in mixed if c.key.target == "ort:cpu")
    assert derived.speedup_interval(by_key, ort).scope == stats.UNPAIRED
    assert second.tag != first.tag


def _script(name):
    import importlib.util

    path = ROOT / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_aa_coverage_script_on_the_amd_pair(capsys):
    pair = [str(FIXTURES / "ci-quick-amd-epyc" / f"{r}.json") for r in ("a", "b")]
    assert _script("aa_coverage").main(pair) == 0
    assert "A-A cross-coverage: 72/80" in capsys.readouterr().out
    assert _script("aa_coverage").main([*pair, "--min", "0.95"]) == 1


def test_same_answer_script_counts_flips_and_inconclusives(capsys):
    pair = [str(FIXTURES / "ci-quick-amd-epyc" / f"{r}.json") for r in ("a", "b")]
    # ci-quick's two processes per contest: the same shippable format 8 times in 10 (the two that
    # differ are inconclusive in one run), most answers inconclusive at K = 2: this pair fails the
    # `make bench` standard.
    assert _script("same_answer").main(pair) == 1
    out = capsys.readouterr().out
    assert "same answer: 8/10; inconclusive: 5 and 3; flips without an inconclusive: 0" in out
    assert re.search(
        r"machine load \(medians over fastest calls; busy above 1.15x\): 1\.\d\dx( \(busy\))? and 1\.\d\dx",
        out,
    )


def test_a_cases_reference_is_eager_pytorch_on_the_same_kind_of_device():
    from ccnbench.results import CaseKey

    key = CaseKey("model-n3", "d1g3st00", "merged", "ort:tensorrt", "fp16", 8, "channels_last_3d")
    ref = derived.reference_key(key)
    assert ref == replace(key, target="torch:cuda")  # everything else is the case's own
    assert derived.is_reference(ref) and derived.reference_key(ref) == ref
    assert not derived.is_reference(key) and not derived.is_reference(replace(key, target="compile:cpu"))


def _timed(per_process):
    """A contest case whose process p ran the calls ``per_process[p]`` (ms), one block per round."""
    from ccnbench.measure.timing import Block, LatencyStats
    from ccnbench.results import CaseKey, CaseResult

    blocks = [Block(p, r, (ms,)) for p, calls in enumerate(per_process) for r, ms in enumerate(calls)]
    key = CaseKey("model-n3", "d1g3st00", "kept", "ort:cpu", "fp32", 1)
    return CaseResult(key, "ok", latency=LatencyStats.from_blocks(blocks, 1, "perf_counter"), contest="c1")


def test_machine_load_is_how_far_medians_sat_above_the_fastest_calls():
    quiet = _timed([[1.0, 1.01, 1.02], [2.0, 2.0, 2.02]])
    busy = _timed([[1.0, 1.4, 1.5], [1.0, 1.2, 1.3]])  # median 1.4 and 1.2 over a fastest call of 1.0
    assert abs(derived.machine_load([quiet]) - (1.01 * 1.0) ** 0.5) < 1e-9
    assert abs(derived.machine_load([busy]) - (1.4 * 1.2) ** 0.5) < 1e-9
    assert derived.load_note([quiet]) is None and derived.machine_load([]) is None
    note = derived.load_note([busy])
    assert "1.30x the fastest calls" in note and "repeats" in note


def test_figures_print_as_what_they_are_on_hand_built_blocks():
    assert [derived.significant(x) for x in (1.1749, 0.18412, 45.31, 1234.5, 0.0)] == [
        "1.17", "0.184", "45.3", "1234", "0"
    ]  # fmt: skip
    # Two calm processes (fastest calls 1.00 and 1.04 ms), each with its own median.
    blocks = [
        Block(p, r, (base, base * 1.1, base * 1.3)) for p, base in ((0, 1.0), (1, 1.04)) for r in range(3)
    ]
    lat = LatencyStats.from_blocks(blocks, 1, "perf_counter")
    interval = stats.fastest_interval(lat)
    assert derived.fastest_text(lat) == (
        f"{lat.fastest:.3f} [{derived.significant(interval.low)}, {derived.significant(interval.high)}]"
    )
    assert derived.percentile_text(lat, 50) == f"{lat.median:.3f} (1.10-1.14)"  # 1.1 and 1.04 * 1.1
    assert derived.spread(lat, 50) == "1.10-1.14"
    # One process: the values alone, never a made-up interval or range.
    one = LatencyStats.from_blocks(blocks[:3], 1, "perf_counter")
    assert derived.fastest_text(one) == "1.000" and derived.percentile_text(one, 99) == f"{one.p99:.3f}"
    assert derived.fastest_bounds(one) is None and derived.spread(one, 50) is None


def test_the_2026_12_06_pair_repeats_its_fastest_calls_not_its_medians():
    """The fixture's README: the headline (paired fastest-call ratio to eager PyTorch) agreed
    within ±10 % between the two runs for 18 of 20 cases, the ratio of p50 medians for 7."""
    a, b = (results.load(PAIR / f"{name}.json") for name in ("a", "b"))
    ia, ib = derived.index(a.cases), derived.index(b.cases)

    def median_ratio(cases, case):
        return derived.median_ms(case) / derived.median_ms(cases[derived.reference_key(case.key)])

    headline, medians = [], []
    for key, case in ia.items():
        if derived.is_reference(key):
            continue
        headline.append(
            derived.speedup_interval(ib, ib[key]).value / derived.speedup_interval(ia, case).value
        )
        medians.append(median_ratio(ib, ib[key]) / median_ratio(ia, case))
    within = [sum(abs(r - 1) <= 0.10 for r in ratios) for ratios in (headline, medians)]
    assert len(headline) == 20 and within == [18, 7]
    assert max(max(r, 1 / r) for r in medians) == pytest.approx(1.57, abs=0.005)
