"""Where a ``vacuous`` verdict goes in the answers (issue 41): the gate fails a case that went from
pass to vacuous, recommend still answers an untrained model's question, labelled UNVERIFIED, and
the tables and report show the verdict."""

from dataclasses import replace

from ccnbench.answers.compare import compare
from ccnbench.answers.compare_sides import rows_from_run
from ccnbench.answers.recommend import recommend
from ccnbench.answers.tables import bench_table, check_table

from helpers import case, run

FLAT = "reference too flat: across the batch's samples it varies by at most 1.0e-19, within the tolerance"
KEY = "model-n3/kept/ort:cpu/fp32/b1"


def vacuous(c):
    return replace(c, agreement=replace(c.agreement, vacuous=FLAT))


def test_a_vacuous_case_is_neither_pass_nor_fail():
    c = vacuous(case("ort:cpu", 5.0))
    assert c.verdict == "vacuous" and not c.passed and c.agreement.passed
    assert c.to_dict()["verdict"] == "vacuous" and c.to_dict()["agreement"]["vacuous"] == FLAT


def test_pass_to_vacuous_fails_the_gate_and_back_is_fixed():
    base = run(case("torch:cpu", 10), case("ort:cpu", 5))
    new = run(case("torch:cpu", 10), vacuous(case("ort:cpu", 5)))
    result = compare(rows_from_run(base), rows_from_run(new))
    (change,) = [c for c in result.changes if c.key == KEY]
    assert change.kind == "now vacuous" and result.failed
    assert "now vacuous" in result.markdown()
    back = compare(rows_from_run(new), rows_from_run(base))
    assert not back.failed and {c.key: c.kind for c in back.changes}[KEY] == "fixed"
    both = compare(rows_from_run(new), rows_from_run(new))
    assert not both.failed


def test_fail_to_vacuous_is_not_a_new_failure():
    base = run(case("torch:cpu", 10), case("ort:cpu", 5, passed=False))
    new = run(case("torch:cpu", 10), vacuous(case("ort:cpu", 5)))
    assert not compare(rows_from_run(base), rows_from_run(new)).failed


def test_an_untrained_model_still_gets_a_timing_answer_labelled_unverified():
    cases = [
        vacuous(case("torch:cpu", 10.0)),
        vacuous(case("ort:cpu", 4.0)),
        case("compile:cpu", 1.0, passed=False),
    ]
    (rec,) = recommend(cases)
    assert rec.best.label == "ort:cpu kept fp32"
    assert rec.unverified and "UNVERIFIED" in rec.line() and "trained" in rec.line()
    assert rec.to_dict()["unverified"] == rec.unverified
    assert any(r.startswith("compile:cpu kept fp32") and "failed agreement" in r for r in rec.rejected)


def test_a_pass_outranks_a_faster_vacuous_format_which_is_named():
    cases = [case("torch:cpu", 10.0), vacuous(case("ort:cpu", 4.0))]
    (rec,) = recommend(cases)
    assert rec.best.label == "torch:cpu kept fp32" and not rec.unverified
    assert "UNVERIFIED" not in rec.line()
    (why,) = rec.rejected
    assert why.startswith("ort:cpu kept fp32 was 2.50x faster but is vacuous")


def test_tables_show_the_verdict():
    from rich.console import Console

    console = Console(width=250, record=True)
    cases = [case("torch:cpu", 10.0), vacuous(case("ort:cpu", 4.0))]
    console.print(check_table(cases))
    console.print(bench_table(cases))
    assert console.export_text().count("vacuous") == 2
