from typer.testing import CliRunner

from ccnbench import results
from ccnbench.cli import app
from ccnbench.recommend import recommend

from helpers import case, run


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

    # ORT merged is 1 % faster than eager kept: inside the noise, so eager kept is shipped.
    cases = contest_cases({("torch:cpu", "kept"): 2.0, ("ort:cpu", "merged"): 1.98, ("ort:cpu", "kept"): 3.0},
                          noise=0.05, rounds=4)  # fmt: skip
    (rec,) = recommend(cases)
    assert rec.best.label == "torch:cpu kept fp32"
    assert rec.runner_up.label == "ort:cpu merged fp32" and rec.runner_up_ratio.tie
    assert "a tie with the fastest, ort:cpu merged fp32" in rec.line() and "simpler format" in rec.line()


def test_a_resolved_difference_ships_the_faster_format_with_its_interval():
    from helpers import contest_cases

    cases = contest_cases({("torch:cpu", "kept"): 2.0, ("ort:cpu", "merged"): 1.0})
    (rec,) = recommend(cases)
    assert rec.best.label == "ort:cpu merged fp32" and rec.tie_note == ""
    ratio = rec.runner_up_ratio
    assert not ratio.tie and ratio.contains(2.0)
    assert f"takes {ratio.format()} its time (slower)" in rec.line()
