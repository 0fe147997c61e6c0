"""The regression gate on hand-made result pairs."""

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from ccnbench import results
from ccnbench.answers.compare import METRICS, compare, parse_threshold
from ccnbench.answers.compare_sides import load_side, rows_from_run
from ccnbench.answers.derived import index, reference_key, speedup_interval
from ccnbench.cli import app
from ccnbench.errors import UsageError

from helpers import FIXTURES, PAIR, PAIR_CASE, ROOT, case, run

cli = CliRunner()


def _pair(ort_base, ort_new, torch_base=10.0, torch_new=10.0, **kw):
    base = run(case("torch:cpu", torch_base), case("ort:cpu", ort_base, **kw))
    new = run(case("torch:cpu", torch_new), case("ort:cpu", ort_new, **kw))
    return rows_from_run(base), rows_from_run(new)


def _kinds(result):
    return {c.key: c.kind for c in result.changes}


KEY = "model-n3/kept/ort:cpu/fp32/b1"


def test_regression_beyond_threshold_fails_within_passes():
    assert _kinds(compare(*_pair(5.0, 6.0), threshold=0.10))[KEY] == "regression"  # +20 %
    assert compare(*_pair(5.0, 6.0), threshold=0.10).failed
    within = compare(*_pair(5.0, 5.4), threshold=0.10)  # +8 %
    assert _kinds(within)[KEY] == "unchanged" and not within.failed


def test_improvement_is_reported_and_passes():
    result = compare(*_pair(5.0, 3.0))
    assert _kinds(result)[KEY] == "improvement" and not result.failed
    change = next(c for c in result.changes if c.key == KEY)
    assert change.slowdown == pytest.approx(-0.4)


def test_relative_mode_ignores_a_uniformly_slower_machine_absolute_does_not():
    pair = _pair(5.0, 10.0, torch_base=10.0, torch_new=20.0)  # everything twice as slow
    assert not compare(*pair).failed
    absolute = compare(*pair, relative=False)
    assert absolute.failed and _kinds(absolute)[KEY] == "regression"


def test_a_target_slowed_twofold_is_caught_relative_to_the_reference():
    result = compare(*_pair(5.0, 10.0), threshold=0.5, by="target")
    assert result.failed
    assert [c.key for c in result.failures] == ["ort:cpu (all cases)"]


def test_new_agreement_failure_and_new_crash_fail_the_gate():
    base = run(case("torch:cpu", 10), case("ort:cpu", 5), case("ort:cpu", 5, batch=8))
    new = run(
        case("torch:cpu", 10), case("ort:cpu", 5, passed=False), case("ort:cpu", 5, batch=8, status="timeout")
    )
    result = compare(rows_from_run(base), rows_from_run(new))
    kinds = _kinds(result)
    assert kinds[KEY] == "new failure"
    assert kinds["model-n3/kept/ort:cpu/fp32/b8"] == "new crash"
    assert result.failed
    healed = compare(rows_from_run(new), rows_from_run(base))
    assert not healed.failed and set(_kinds(healed).values()) >= {"fixed"}


def test_missing_cases_are_reported_and_fail_only_when_asked():
    base = run(case("torch:cpu", 10), case("ort:cpu", 5), case("ort:cpu", 5, layout="merged"))
    new = run(case("torch:cpu", 10), case("ort:cpu", 5), case("ort:cpu", 5, batch=4))
    result = compare(rows_from_run(base), rows_from_run(new))
    kinds = _kinds(result)
    assert kinds["model-n3/merged/ort:cpu/fp32/b1"] == "only in base"
    assert kinds["model-n3/kept/ort:cpu/fp32/b4"] == "only in new"
    assert not result.failed
    assert compare(rows_from_run(base), rows_from_run(new), fail_on_missing=True).failed


def test_p99_and_throughput_metrics():
    base = run(case("torch:cpu", 10), case("ort:cpu", 5))
    new = run(case("torch:cpu", 10), case("ort:cpu", 7))
    assert compare(rows_from_run(base), rows_from_run(new), metric="throughput").failed
    assert compare(rows_from_run(base), rows_from_run(new), metric="p99").failed
    with pytest.raises(UsageError):
        compare(rows_from_run(base), rows_from_run(new), metric="p42")


def test_threshold_parsing():
    assert parse_threshold("10%") == pytest.approx(0.1)
    assert parse_threshold("0.25") == pytest.approx(0.25)
    for bad in ("ten", "-5%"):
        with pytest.raises(UsageError):
            parse_threshold(bad)


def test_cli_exit_codes_markdown_and_json(tmp_path):
    results.save(run(case("torch:cpu", 10), case("ort:cpu", 5)), tmp_path / "base")
    results.save(run(case("torch:cpu", 10), case("ort:cpu", 8)), tmp_path / "new")
    failed = cli.invoke(app, ["compare", str(tmp_path / "base"), str(tmp_path / "new")])
    assert failed.exit_code == 1 and "| model-n3/kept/ort:cpu/fp32/b1 | regression |" in failed.output
    passed = cli.invoke(
        app, ["compare", str(tmp_path / "base"), str(tmp_path / "new"), "--threshold", "80%", "--json"]
    )
    assert passed.exit_code == 0
    assert json.loads(passed.stdout)["failed"] is False


def test_incompatible_schema_is_a_clear_error(tmp_path):
    results.save(run(case("torch:cpu", 10)), tmp_path / "base")
    data = json.loads((tmp_path / "base" / "results.json").read_text())
    data["schema_version"] = 99
    (tmp_path / "future").mkdir()
    (tmp_path / "future" / "results.json").write_text(json.dumps(data))
    result = cli.invoke(app, ["compare", str(tmp_path / "base"), str(tmp_path / "future")])
    assert result.exit_code == 1
    assert (
        result.output.strip()
        == f"error: {tmp_path / 'future' / 'results.json'} has results schema version 99; this ccnbench reads versions 1, 2"
    )


def test_pytest_benchmark_files_are_read_and_keyed_by_their_extra_info(tmp_path):
    def bench_file(path, ort_seconds, ort_min=None):
        benches = [
            {"name": f"t[{t}]", "fullname": f"t[{t}]", "stats": {"min": low or s / 2, "median": s, "max": s * 2},
             "extra_info": {"model": "early-n3", "layout": "kept", "target": t, "batch": 8}}
            for t, s, low in (("torch:cpu", 0.004, None), ("ort:cpu", ort_seconds, ort_min))
        ]  # fmt: skip
        path.write_text(json.dumps({"machine_info": {}, "benchmarks": benches}))
        return path

    base = load_side(bench_file(tmp_path / "a.json", 0.001))
    new = load_side(bench_file(tmp_path / "b.json", 0.003))
    assert base.kind == "pytest-benchmark"
    result = compare(base.rows, new.rows)
    assert result.failed and _kinds(result)["early-n3/kept/ort:cpu/fp32/b8"] == "regression"
    # fastest reads stats.min, p50 stats.median: a median that moved alone moves only p50.
    loaded = load_side(bench_file(tmp_path / "c.json", 0.003, ort_min=0.0005))
    assert _kinds(compare(base.rows, loaded.rows))["early-n3/kept/ort:cpu/fp32/b8"] == "unchanged"
    assert (
        _kinds(compare(base.rows, loaded.rows, metric="p50"))["early-n3/kept/ort:cpu/fp32/b8"] == "regression"
    )
    mixed = cli.invoke(app, ["compare", str(tmp_path / "a.json"), str(tmp_path / "x")])
    assert mixed.exit_code == 1 and "no results at" in mixed.output


def _contest_run(ort_level, seed, **noise):
    from helpers import contest_cases

    return rows_from_run(run(*contest_cases({("torch:cpu", "kept"): 2.0, ("ort:cpu", "kept"): ort_level},
                                             seed=seed, **noise)))  # fmt: skip


def test_contest_runs_compare_paired_ratios_with_intervals():
    base, same, slow = _contest_run(1.0, seed=1), _contest_run(1.0, seed=2), _contest_run(1.3, seed=3)
    assert base[KEY].ratio.contains(0.5)
    assert not compare(base, same, threshold=0.15).failed
    result = compare(base, slow, threshold=0.15)
    assert _kinds(result)[KEY] == "regression" and result.failed
    change = next(c for c in result.changes if c.key == KEY)
    assert change.slowdown == pytest.approx(0.3, abs=0.05) and "[" in change.detail


def test_a_change_beyond_the_threshold_but_inside_the_noise_is_not_a_regression():
    # two processes a side that disagree (each format moved by up to ±7 % per process), three rounds
    noise = {"process_spread": 0.07, "processes": 2, "rounds": 3}
    noisy_base, noisy_new = _contest_run(1.0, seed=4, **noise), _contest_run(1.2, seed=5, **noise)
    result = compare(noisy_base, noisy_new, threshold=0.15)
    change = next(c for c in result.changes if c.key == KEY)
    assert change.slowdown > 0.15  # beyond the threshold ...
    assert change.kind == "unchanged" and "within the noise" in change.detail  # ... but not resolved


# --- like with like -------------------------------------------------------------------------------

AMD = FIXTURES / "ci-quick-amd-epyc"
XEON_BASELINE = ROOT / "results" / "baseline-ci" / "intel-xeon"


def _elsewhere(run_result):
    """The same run as if recorded on another machine."""
    from dataclasses import replace

    env = replace(run_result.environment, cpu_model_number="999", machine_id="0123456789ab")
    return replace(run_result, environment=env)


def _sides(base_run, new_run):
    from ccnbench.answers.compare_sides import Side, machine_differences

    base = Side("ccnbench", rows_from_run(base_run), base_run.environment)
    new = Side("ccnbench", rows_from_run(new_run), new_run.environment)
    return base.rows, new.rows, machine_differences(base, new)


def test_speed_is_not_judged_across_machines_unless_forced():
    base = run(case("torch:cpu", 10.0), case("ort:cpu", 5.0))
    new = _elsewhere(run(case("torch:cpu", 10.0), case("ort:cpu", 8.0)))
    b, n, unlike = _sides(base, new)
    assert unlike == ["cpu_model_number: " + base.environment.cpu_model_number + " -> 999"]
    result = compare(b, n, threshold=0.10, unlike=unlike)
    assert _kinds(result)[KEY] == "not judged" and not result.failed and not result.speed_judged
    assert "not judged" in result.markdown() and "cpu_model_number" in result.markdown()
    forced = compare(b, n, threshold=0.10, unlike=unlike, force_speed=True)
    assert _kinds(forced)[KEY] == "regression" and forced.failed


def test_across_machines_agreement_failures_crashes_and_missing_cases_still_fail():
    base = run(
        case("torch:cpu", 10), case("ort:cpu", 5), case("ort:cpu", 5, batch=8), case("torch:cpu", 9, batch=2)
    )
    new = _elsewhere(
        run(
            case("torch:cpu", 10),
            case("ort:cpu", 5, passed=False),
            case("ort:cpu", 0, batch=8, status="failed"),
        )
    )
    b, n, unlike = _sides(base, new)
    result = compare(b, n, unlike=unlike, fail_on_missing=True)
    kinds = _kinds(result)
    assert kinds[KEY] == "new failure" and kinds["model-n3/kept/ort:cpu/fp32/b8"] == "new crash"
    assert kinds["model-n3/kept/torch:cpu/fp32/b2"] == "only in base"
    assert len(result.failures) == 3 and not result.speed_judged


def test_by_target_across_machines_is_not_judged_either():
    base = run(case("torch:cpu", 10.0), case("ort:cpu", 5.0))
    b, n, unlike = _sides(base, _elsewhere(run(case("torch:cpu", 10.0), case("ort:cpu", 10.0))))
    result = compare(b, n, by="target", unlike=unlike)
    assert [c.kind for c in result.changes if c.target == "ort:cpu"] == ["not judged"] and not result.failed


def _slowed(run_result, target="ort:cpu", factor=1.3):
    """``run_result`` with every block of ``target`` ``factor`` times slower (an injected slow-down)."""
    from dataclasses import replace

    from ccnbench.measure.timing import Block, LatencyStats

    cases = []
    for c in run_result.cases:
        if c.key.target == target and c.latency is not None:
            blocks = [
                Block(b.process, b.round, tuple(s * factor for s in b.samples_ms)) for b in c.latency.blocks
            ]
            c = replace(c, latency=LatencyStats.from_blocks(blocks, c.latency.batch, c.latency.clock))
        cases.append(c)
    return replace(run_result, cases=tuple(cases))


def test_amd_runs_against_the_xeon_baseline_speed_is_not_judged(tmp_path):
    plain = cli.invoke(app, ["compare", str(XEON_BASELINE), str(AMD / "a.json"), "--threshold", "15%"])
    assert plain.exit_code == 0, plain.output
    assert (
        "unknown machine" in plain.output
        and "not judged" in plain.output
        and "| regression |" not in plain.output
    )
    forced = cli.invoke(
        app, ["compare", str(XEON_BASELINE), str(AMD / "a.json"), "--threshold", "15%", "--force-speed"]
    )
    assert forced.exit_code == 1 and "| regression |" in forced.output  # what CI used to say on an EPYC


def test_amd_a_a_passes_and_an_injected_thirty_percent_fails_when_forced(tmp_path):
    a, b = results.load(AMD / "a.json"), results.load(AMD / "b.json")
    same = compare(rows_from_run(a), rows_from_run(b), threshold=0.15, fail_on_missing=True)
    assert not same.failed and set(same.counts()) == {"reference", "unchanged"}
    slow = compare(rows_from_run(a), rows_from_run(_slowed(b)), threshold=0.15, fail_on_missing=True)
    regressions = [c for c in slow.changes if c.kind == "regression"]
    assert slow.failed and {c.target for c in regressions} == {"ort:cpu"} and len(regressions) >= 18
    assert all(0.2 < c.slowdown < 0.4 for c in regressions)


def test_a_case_whose_processes_disagree_is_not_a_regression_by_one_process():
    # The gate's unit is a contest process: one process of four in a slow "mode" (+40 %) moves the
    # mean by 20 %, beyond the threshold, but the case's own spread says it is not resolved.
    from ccnbench.answers.compare_sides import Row

    def row(values):  # the median call moves with the processes' fastest calls, as in a real change
        median = 2.0 * math.exp(sum(values) / len(values))
        return Row(KEY, "ort:cpu", "ok", True, {"p50": median}, "ref", None, tuple(values))

    ref = Row("ref", "torch:cpu", "ok", True, {"p50": 2.0})
    base = {KEY: row([-0.70, -0.71]), "ref": ref}
    mode = {KEY: row([-0.70, -0.70 + 0.34]), "ref": ref}
    real = {KEY: row([-0.70 + 0.26, -0.71 + 0.26]), "ref": ref}
    assert _kinds(compare(base, mode, threshold=0.15))[KEY] == "unchanged"
    assert _kinds(compare(base, real, threshold=0.15))[KEY] == "regression"


def test_a_change_in_the_fastest_calls_alone_is_not_a_regression():
    # Every process of the base met quiet moments on the host (ONNX Runtime calls of 1.2 ms among
    # 2.1 ms ones), no process of the head did: the fastest calls moved +25 %, the median calls not.
    from ccnbench.answers.compare_sides import Row

    def row(fastest_ratio, median_ms):
        logs = (math.log(fastest_ratio), math.log(fastest_ratio) + 0.01)
        return Row(KEY, "ort:cpu", "ok", True, {"p50": median_ms}, "ref", None, logs)

    ref = Row("ref", "torch:cpu", "ok", True, {"p50": 5.0})
    base = {KEY: row(0.30, 2.10), "ref": ref}
    quiet_moments = {KEY: row(0.375, 2.00), "ref": ref}
    slower_code = {KEY: row(0.375, 2.60), "ref": ref}  # every call 1.25x: the median moved too
    change = next(c for c in compare(base, quiet_moments, threshold=0.15).changes if c.key == KEY)
    assert change.kind == "unchanged" and "fastest calls only" in change.detail and "-4.8%" in change.detail
    assert _kinds(compare(base, slower_code, threshold=0.15))[KEY] == "regression"
    faster = {KEY: row(0.24, 2.10), "ref": ref}  # the same rule for an improvement
    assert _kinds(compare(base, faster, threshold=0.15))[KEY] == "unchanged"


def test_pytest_benchmark_files_are_judged_like_with_like_by_their_machine_info(tmp_path):
    def bench_file(name, ort_seconds, cpu):
        benches = [{"name": f"t[{t}]", "fullname": f"t[{t}]", "stats": {"min": s, "median": s},
                    "extra_info": {"model": "early-n3", "layout": "kept", "target": t, "batch": 8}}
                   for t, s in (("torch:cpu", 0.004), ("ort:cpu", ort_seconds))]  # fmt: skip
        path = tmp_path / name
        path.write_text(
            json.dumps({"machine_info": {"python_version": "3.11.7", "cpu": cpu}, "benchmarks": benches})
        )
        return str(path)

    xeon = {"brand_raw": "Intel(R) Xeon(R) Processor", "vendor_id_raw": "GenuineIntel", "family": 6, "model": 207,
            "stepping": 2, "count": 2, "flags": ["avx2", "amx_tile", "sse"]}  # fmt: skip
    epyc = {**xeon, "brand_raw": "AMD EPYC", "vendor_id_raw": "AuthenticAMD", "family": 25, "model": 17}
    base = bench_file("a.json", 0.001, xeon)
    same = cli.invoke(app, ["compare", base, bench_file("b.json", 0.003, xeon)])
    assert same.exit_code == 1 and "| regression |" in same.output
    other = cli.invoke(app, ["compare", base, bench_file("c.json", 0.003, epyc)])
    assert (
        other.exit_code == 0
        and "not judged" in other.output
        and "cpu_vendor: GenuineIntel -> AuthenticAMD" in other.output
    )
    unknown = cli.invoke(app, ["compare", base, bench_file("d.json", 0.003, {})])
    assert unknown.exit_code == 0 and "new file: unknown machine" in unknown.output


def _pair_2026_12_06():
    runs = [results.load(PAIR / f"{name}.json") for name in ("a", "b")]
    return [rows_from_run(r) for r in runs], [index(r.cases) for r in runs]


def test_metric_p50_is_the_ratio_of_medians_and_fastest_the_paired_ratio_on_the_2026_12_06_pair():
    """The pair whose medians moved with the host's load: --metric p50 judges the ratio of each
    case's median to its reference's (unpaired, no intervals), --metric fastest (the default) the
    paired fastest-call ratio every view shows."""
    (base, new), (cases_a, cases_b) = _pair_2026_12_06()
    medians = compare(base, new, metric="p50")
    change = next(c for c in medians.changes if c.key == PAIR_CASE)
    for value, cases in ((change.base, cases_a), (change.new, cases_b)):
        timed = next(c for k, c in cases.items() if str(k) == PAIR_CASE)
        ref = cases[reference_key(timed.key)]
        assert value == pytest.approx(np.median(timed.latency.samples_ms) / np.median(ref.latency.samples_ms))
    assert change.new / change.base > 1.5 and change.kind == "regression"  # the median moved with the load
    assert change.detail == ""  # no interval is claimed for a ratio of medians

    fastest = compare(base, new, metric="fastest")
    assert fastest.changes == compare(base, new).changes  # the default
    for change in fastest.changes:
        if change.kind == "reference":
            continue
        for value, cases in ((change.base, cases_a), (change.new, cases_b)):
            timed = next(c for k, c in cases.items() if str(k) == change.key)
            assert value == pytest.approx(1 / speedup_interval(cases, timed).value)
    assert "regression" not in fastest.counts()
    text = fastest.markdown()
    assert "Metric fastest: fastest call (own speed), ratio to eager PyTorch" in text and "paired" in text
    assert (
        "Metric p50: median (under the host's load)" in medians.markdown()
        and "unpaired" in medians.markdown()
    )


def test_metric_fastest_unpaired_and_absolute_read_the_fastest_call():
    base = run(case("torch:cpu", 10.0), case("ort:cpu", 5.0))
    new = run(case("torch:cpu", 10.0), case("ort:cpu", 6.0))
    by_key = {str(c.key): c for c in base.cases} | {"new " + str(c.key): c for c in new.cases}
    relative = next(c for c in compare(rows_from_run(base), rows_from_run(new)).changes if c.key == KEY)
    ref = "model-n3/kept/torch:cpu/fp32/b1"
    assert relative.base == pytest.approx(by_key[KEY].latency.fastest / by_key[ref].latency.fastest)
    absolute = compare(rows_from_run(base), rows_from_run(new), relative=False)
    change = next(c for c in absolute.changes if c.key == KEY)
    assert (change.base, change.new) == (by_key[KEY].latency.fastest, by_key["new " + KEY].latency.fastest)
    assert "fastest call (own speed), absolute" in absolute.markdown()
    medians = compare(rows_from_run(base), rows_from_run(new), metric="p50", relative=False)
    change = next(c for c in medians.changes if c.key == KEY)
    assert (change.base, change.new) == (by_key[KEY].latency.median, by_key["new " + KEY].latency.median)


def test_an_unknown_metric_is_a_one_line_usage_error_naming_the_choices(tmp_path):
    results.save(run(case("torch:cpu", 10), case("ort:cpu", 5)), tmp_path / "base")
    out = cli.invoke(app, ["compare", str(tmp_path / "base"), str(tmp_path / "base"), "--metric", "median"])
    assert out.exit_code == 2
    assert len(out.output.strip().splitlines()) == 1 and "unknown metric 'median'" in out.output
    assert all(name in out.output for name in METRICS) and list(METRICS) == [
        "fastest",
        "p50",
        "p99",
        "throughput",
    ]
