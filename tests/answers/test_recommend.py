import re

import numpy as np
import pytest
from typer.testing import CliRunner

from ccnbench import results
from ccnbench.answers.recommend import recommend
from ccnbench.answers.stats import pair
from ccnbench.cli import app

from helpers import PAIR, PAIR_CASE, by_process, case, fastest_by_hand, run


def test_fastest_passing_format_wins_and_faster_failures_are_explained():
    cases = [
        case("torch:cpu", 10.0),
        case("ort:cpu", 4.0),
        case("ort:cpu", 3.0, layout="merged"),
        case("compile:cpu", 1.0, passed=False),  # fastest, but wrong
        case("ort:cpu", 2.0, precision="fp16", status="failed"),
    ]
    (rec,) = recommend(cases)
    assert rec.best.label == "ort:cpu merged fp32" and rec.best.median == 3.0
    assert rec.runner_up.label == "ort:cpu kept fp32"
    assert rec.margin == (4.0 / 3.0) - 1
    assert len(rec.rejected) == 1 and rec.rejected[0].startswith(
        "compile:cpu kept fp32 was 3.00x faster but failed agreement"
    )
    assert rec.not_measured == ("ort:cpu fp16: failed: failed on purpose",)
    assert "ship ort:cpu merged fp32" in rec.line()


def test_one_recommendation_per_model_batch_and_device():
    cases = [
        case("torch:cpu", 5.0),
        case("torch:cpu", 9.0, batch=8),
        case("torch:cuda", 1.0),
        case("ort:cuda", 0.5),
    ]
    recs = {(r.batch, r.device): r for r in recommend(cases)}
    assert set(recs) == {(1, "cpu"), (8, "cpu"), (1, "cuda")}
    assert recs[1, "cuda"].best.label == "ort:cuda kept fp32"
    assert recommend(cases, precisions=["fp16"]) == []


def test_nothing_passing_says_so(tmp_path):
    results.save(run(case("torch:cpu", 5.0, passed=False)), tmp_path)
    out = CliRunner().invoke(app, ["recommend", str(tmp_path)])
    assert out.exit_code == 0 and "nothing both ran and agreed" in out.output


def test_a_tie_ships_the_simpler_format_and_says_so():
    from helpers import contest_cases

    # ORT merged is 1 % faster than eager kept, known within ±10 %: a tie, so eager kept is shipped.
    cases = contest_cases({("torch:cpu", "kept"): 2.0, ("ort:cpu", "merged"): 1.98, ("ort:cpu", "kept"): 3.0},
                          noise=0.01, rounds=10)  # fmt: skip
    (rec,) = recommend(cases)
    assert rec.best.label == "torch:cpu kept fp32"
    assert rec.runner_up.label == "ort:cpu merged fp32" and rec.runner_up_ratio.tie and rec.verdict == "tie"
    assert re.search(
        r"a tie \(90% interval \[[0-9.]+, [0-9.]+\] inside ±10%\) with the fastest, ort:cpu merged",
        rec.line(),
    )
    assert "simpler format" in rec.line()


def test_a_wide_interval_is_inconclusive_ships_the_faster_point_estimate_and_says_what_to_run():
    from helpers import contest_cases

    # OpenVINO 1.1x faster on the point estimate, but 3 processes that disagree cannot tell.
    cases = contest_cases({("ort:cpu", "kept"): 2.2, ("openvino:cpu", "merged"): 2.0},
                          rounds=3, process_spread=0.07, seed=3)  # fmt: skip
    (rec,) = recommend(cases, shippable=True)
    ratio = rec.runner_up_ratio
    assert ratio.contains(1.0) and not ratio.tie
    assert rec.best.label == "openvino:cpu merged fp32" and rec.tie_note == ""  # not the slower one
    assert rec.verdict == "inconclusive" and rec.inconclusive
    line = rec.line()
    assert "INCONCLUSIVE against ort:cpu kept fp32" in line and "not a tie" in line and "repeats" in line
    assert rec.to_dict()["verdict"] == "inconclusive" and "repeats" in rec.to_dict()["resolve"]


def test_a_simpler_runner_up_near_the_margin_s_edge_is_inconclusive_not_slower():
    from helpers import contest_cases

    # ORT kept 9 % slower than ORT merged (the faster); in a tie kept (the simpler) would ship, so
    # "slower" must mean beyond ±10 %, which 9 % with this noise is not.
    levels = {("ort:cpu", "merged"): 2.0, ("ort:cpu", "kept"): 2.18}
    (rec,) = recommend(
        contest_cases(levels, processes=4, rounds=6, process_spread=0.03, seed=1), shippable=True
    )
    ratio = rec.runner_up_ratio
    assert rec.best.label == "ort:cpu merged fp32" and rec.undecided.label == "ort:cpu kept fp32"
    assert ratio.low > 1 and ratio.tie_low < 1.10 < ratio.tie_high  # slower, across the edge
    assert rec.verdict == "inconclusive" and rec.inconclusive
    assert "INCONCLUSIVE against ort:cpu kept fp32" in rec.line()
    assert "crosses the ±10% margin" in rec.line() and "repeats" in rec.line()
    # The same gap with the simpler format the faster one: the tie would ship it anyway.
    levels = {("ort:cpu", "kept"): 2.0, ("ort:cpu", "merged"): 2.18}
    (rec,) = recommend(
        contest_cases(levels, processes=4, rounds=6, process_spread=0.03, seed=1), shippable=True
    )
    assert rec.best.label == "ort:cpu kept fp32" and rec.undecided is None and rec.verdict == "slower"
    # And with a vendor's runtime (OpenVINO) the slower of two runtimes of one ONNX file: a tie would
    # ship the vendor-neutral ONNX Runtime, the faster one, anyway, so the gap against parity decides.
    levels = {("ort:cpu", "merged"): 2.0, ("openvino:cpu", "merged"): 2.18}
    (rec,) = recommend(
        contest_cases(levels, processes=4, rounds=6, process_spread=0.03, seed=1), shippable=True
    )
    assert rec.best.label == "ort:cpu merged fp32" and rec.undecided is None and rec.verdict == "slower"


def test_one_calm_process_of_several_does_not_decide_against_the_simpler_format():
    from dataclasses import replace

    from ccnbench.measure.timing import Block

    from helpers import contest_cases

    def slowed(cases, processes, factor):
        """``cases`` with every block of ``processes`` ``factor`` slower: those processes ran
        disturbed throughout, every format in them alike (the run's shared bias)."""
        out = []
        for c in cases:
            blocks = [Block(b.process, b.round, tuple(x * factor for x in b.samples_ms))
                      if b.process in processes else b for b in c.latency.blocks]  # fmt: skip
            latency = type(c.latency).from_blocks(blocks, c.latency.batch, c.latency.clock)
            out.append(replace(c, latency=latency))
        return out

    # ORT kept (the simpler) 30 % slower than ORT merged, in three processes
    levels = {("ort:cpu", "merged"): 2.0, ("ort:cpu", "kept"): 2.6}
    cases = contest_cases(levels, processes=3, rounds=6, process_spread=0.01, seed=2)
    (rec,) = recommend(cases, shippable=True)
    assert rec.undecided is None and rec.verdict == "slower"  # all three calm: settled
    # processes 1 and 2 ran 30 % slow throughout: one calm process of three is left
    (rec,) = recommend(slowed(cases, {1, 2}, 1.3), shippable=True)
    ratio = rec.runner_up_ratio
    assert ratio.scope == "within-process" and ratio.timed == 3 and ratio.one_calm_of_several
    assert ratio.low > 1.1  # slower beyond the margin, by that one process's rounds
    assert rec.best.label == "ort:cpu merged fp32" and rec.verdict == "inconclusive"
    assert "slower in the one process calm for both (3 timed them" in rec.line()
    # a protocol of one process per contest (the GPU check's) is labelled within-process and decides
    (rec,) = recommend(contest_cases(levels, processes=1, rounds=6, seed=2), shippable=True)
    assert rec.runner_up_ratio.scope == "within-process" and rec.runner_up_ratio.timed == 1
    assert rec.verdict == "slower"


def test_formats_from_different_contests_or_runs_never_pair():
    from dataclasses import replace

    from helpers import contest_cases

    cases = contest_cases({("ort:cpu", "kept"): 2.0, ("openvino:cpu", "kept"): 1.0})
    ort, ov = sorted(cases, key=lambda c: c.key.target, reverse=True)
    assert ort.key.target == "ort:cpu"
    for other in (replace(ov, contest="c2"), replace(ov, run="another run")):
        (rec,) = recommend([ort, other])
        assert rec.runner_up_ratio.scope == "unpaired" and rec.verdict == "unpaired"
        assert "unpaired" in rec.line() and rec.margin == ort.latency.fastest / ov.latency.fastest - 1


def test_a_resolved_difference_ships_the_faster_format_with_its_interval():
    from helpers import contest_cases

    cases = contest_cases({("torch:cpu", "kept"): 2.0, ("ort:cpu", "merged"): 1.0})
    (rec,) = recommend(cases)
    assert rec.best.label == "ort:cpu merged fp32" and rec.tie_note == ""
    ratio = rec.runner_up_ratio
    assert not ratio.tie and ratio.contains(2.0)
    assert f"takes {ratio.format()} its time (slower)" in rec.line()


def test_a_merged_layout_that_is_the_kept_graph_is_one_format_with_it():
    from dataclasses import replace

    from helpers import contest_cases

    # Early fusion: kept and merged are one graph, timed twice; noise puts merged 1 % ahead with
    # a wide interval. Weighed as two formats that reads "inconclusive"; it is one format.
    levels = {("ort:cpu", "kept"): 2.0, ("ort:cpu", "merged"): 1.98, ("openvino:cpu", "kept"): 3.0}
    cases = contest_cases(levels, noise=0.3, rounds=4, seed=1)
    (before,) = recommend(cases, shippable=True)
    assert before.best.label == "ort:cpu merged fp32" and before.runner_up.label == "ort:cpu kept fp32"
    note = {"merged": False, "reason": "no parallel branches to merge"}
    same = [replace(c, details={"merge": note}) if c.key.layout == "merged" else c for c in cases]
    (rec,) = recommend(same, shippable=True)
    assert rec.best.label == "ort:cpu kept fp32" and rec.runner_up.label == "openvino:cpu kept fp32"
    # Without its kept twin a same-graph merged case is still a format of its own.
    alone = [c for c in same if c.key.layout == "merged" or c.key.target != "ort:cpu"]
    (rec,) = recommend(alone, shippable=True)
    assert rec.best.label == "ort:cpu merged fp32"


def test_the_margin_decides_what_a_tie_is(tmp_path):
    from helpers import contest_cases

    # OpenVINO 7 % faster than ORT, known within a few per cent: a tie at the default ±10 % (the
    # vendor-neutral runtime is shipped, and the line says so), a win for OpenVINO at ±5 %.
    cases = contest_cases({("ort:cpu", "kept"): 2.14, ("openvino:cpu", "kept"): 2.0}, noise=0.005, rounds=10)
    (tie,) = recommend(cases, shippable=True)
    assert tie.best.label == "ort:cpu kept fp32" and "shipping the vendor-neutral runtime" in tie.line()
    assert pair(tie.runner_up.case, tie.best.case).high < 1.0  # shipped although shown slower: a tie
    (strict,) = recommend(cases, shippable=True, equivalence=0.05)
    assert strict.verdict == "slower" and "(slower)" in strict.line()
    assert tie.verdict == "tie" and re.search(
        r"a tie \(90% interval \[[0-9.]+, [0-9.]+\] inside ±10%\) with the fastest, openvino:cpu kept",
        tie.line(),
    )
    path = tmp_path / "r"
    results.save(run(*cases), path)
    out = CliRunner().invoke(app, ["recommend", str(path), "--shippable", "--margin", "5%"])
    assert out.exit_code == 0 and "(slower)" in out.output, out.output
    bad = CliRunner().invoke(app, ["recommend", str(path), "--margin", "a lot"])
    assert bad.exit_code != 0 and "--margin 'a lot'" in bad.output and "Traceback" not in bad.output


def test_answers_from_a_busy_machine_say_so(tmp_path):
    from dataclasses import replace

    from ccnbench.measure.timing import Block, LatencyStats

    from helpers import contest_cases

    def timed(case, slow):  # every call 1-2 % above the fastest, and ``slow`` in two rounds of three
        blocks = [
            Block(
                b.process,
                b.round,
                (case.latency.fastest * (1 + 0.01 * (b.round % 3)) * (slow if b.round % 3 else 1),),
            )
            for b in case.latency.blocks
        ]
        return replace(case, latency=LatencyStats.from_blocks(blocks, 1, "perf_counter"))

    cases = contest_cases({("ort:cpu", "kept"): 2.0, ("openvino:cpu", "kept"): 1.0})
    for name, slow in (("quiet", 1.0), ("busy", 1.3)):  # medians 1.01x and 1.31x the fastest calls
        results.save(run(*(timed(c, slow) for c in cases)), tmp_path / name)
    calm = CliRunner().invoke(app, ["recommend", str(tmp_path / "quiet")])
    loud = CliRunner().invoke(app, ["recommend", str(tmp_path / "busy")])
    assert calm.exit_code == loud.exit_code == 0
    assert "busy" not in calm.output and "note: the machine was busy" in loud.output
    assert "ship openvino:cpu kept" in loud.output  # the answer is still given


def test_a_simpler_format_of_any_rank_with_an_undecided_tie_leaves_the_answer_open():
    from ccnbench.answers.stats import verdict

    from helpers import contest_cases

    # OpenVINO merged fastest, OpenVINO kept 2 % behind (a tie: kept ships), ONNX Runtime kept (the
    # simplest of all) 9.5 % behind, its interval across the ±10 % edge: in a tie it would ship
    # instead, so the answer is open although the runner-up's own verdict is a settled tie.
    levels = {("openvino:cpu", "merged"): 2.0, ("openvino:cpu", "kept"): 2.04,
              ("ort:cpu", "merged"): 2.12, ("ort:cpu", "kept"): 2.19}  # fmt: skip
    (rec,) = recommend(
        contest_cases(levels, processes=5, rounds=6, process_spread=0.02, seed=1), shippable=True
    )
    assert rec.best.label == "openvino:cpu kept fp32" and rec.fastest.label == "openvino:cpu merged fp32"
    assert verdict(rec.runner_up_ratio) == "tie" and rec.undecided.label == "ort:cpu kept fp32"
    assert rec.undecided_ratio.tie_low < 1.10 < rec.undecided_ratio.tie_high
    assert rec.verdict == "inconclusive" and rec.inconclusive
    line = rec.line()
    assert "shipping the simpler format" in line  # the tie that did ship is still said
    assert "INCONCLUSIVE against ort:cpu kept fp32, which takes" in line
    assert "the time of the fastest, openvino:cpu merged fp32" in line and "crosses the ±10% margin" in line
    assert (
        rec.to_dict()["undecided"]["format"] == "ort:cpu kept fp32" and "repeats" in rec.to_dict()["resolve"]
    )
    # ONNX Runtime kept clearly beyond the margin (its 90 % interval above 1.10): settled, a tie.
    (rec,) = recommend(
        contest_cases(levels, processes=5, rounds=6, process_spread=0.02, seed=3), shippable=True
    )
    assert rec.undecided is None and rec.best.label == "openvino:cpu kept fp32" and rec.verdict == "tie"


@pytest.mark.parametrize("name", ["a", "b"])
def test_the_line_keeps_own_speed_apart_from_the_median_under_load(name):
    """On the 2026-12-06 pair, whose medians moved with the host's load (0.219 -> 0.350 ms for this
    case) while its fastest call did not: the fastest call with its 95 % interval, the median with
    its range over processes, computed here from the blocks."""
    cases = list(results.load(PAIR / f"{name}.json").cases)
    timed = next(c for c in cases if str(c.key) == PAIR_CASE)
    rec = next(r for r in recommend(cases) if r.model == timed.key.model and r.batch == 1)
    assert rec.best.case is timed
    found = re.search(
        r"ship ort:cpu kept fp32 \(ONNX file, fastest call ([0-9.]+) ms \[([0-9.]+), ([0-9.]+)\]; median under "
        r"this host's load ([0-9.]+) ms, ([0-9.]+)-([0-9.]+) over 2 processes\)",
        rec.line(),
    )
    assert found, rec.line()
    fastest, low, high, median, least, most = map(float, found.groups())
    assert fastest == pytest.approx(fastest_by_hand(timed.latency), abs=5e-4) and low < fastest < high
    medians = by_process(timed.latency, 50)
    assert median == pytest.approx(float(np.median(timed.latency.samples_ms)), abs=5e-4)
    assert (least, most) == pytest.approx((min(medians.values()), max(medians.values())), rel=5e-3)

    best = rec.to_dict()["best"]
    assert best["median_range_ms"] == pytest.approx([min(medians.values()), max(medians.values())])
    spread = by_process(timed.latency, 99)
    assert best["p99_range_ms"] == pytest.approx([min(spread.values()), max(spread.values())])
    interval_low, interval_high = best["fastest_interval_ms"]
    assert interval_low < best["fastest_ms"] < interval_high and best["processes"] == 2
    assert {"fastest_ms", "median_ms", "p99_ms", "format", "ships"} <= set(best)  # the keys it always had


def test_one_process_gives_no_interval_and_no_range():
    (rec,) = recommend([case("torch:cpu", 10.0), case("ort:cpu", 4.0)])  # no contest blocks
    assert rec.line().startswith(
        f"model-n3 batch 1 on cpu: ship ort:cpu kept fp32 (ONNX file, fastest call {rec.best.fastest:.3f} ms; "
        f"median under this host's load {rec.best.median:.3f} ms)"
    )
    best = rec.to_dict()["best"]
    assert best["fastest_interval_ms"] is None and best["median_range_ms"] is None and best["processes"] == 0
