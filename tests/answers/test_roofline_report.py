"""The roofline in the answers: a case's distance from its roof in the tables, the plot and recommend."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ccnbench.answers.recommend import recommend
from ccnbench.answers.report import write_report
from ccnbench.answers.tables import ROOF, case_cells
from ccnbench.results import save
from ccnbench.roofline.case_roofs import case_reading, stamp
from ccnbench.roofline.layer_costs import Traffic
from ccnbench.roofline.roofs import Roof, RoofKey, RoofPair

from helpers import case, run

PNG = b"\x89PNG\r\n\x1a\n"


def _pair(compute: float, memory: float) -> RoofPair:
    return RoofPair(
        Roof(RoofKey("onnxruntime", "cpu", "fp32", 2), compute, (compute,), "GEMM", "1", "now"),
        Roof(RoofKey("memory", "cpu", "-", 2), memory, (memory,), "triad", "1", "now"),
    )


def _stamped(target: str, median_ms: float, flops: int, bytes_: int, **kw):
    c = case(target, median_ms, **kw)
    return replace(c, details={**c.details, "roofline": stamp(Traffic(flops, bytes_), _pair(100e9, 10e9))})


def test_a_stamped_case_reads_against_its_roofs():
    # 1e7 FLOP and 1e6 B in a fastest call of ~0.97 ms: 10 FLOP/B sits on the ridge's compute side.
    c = _stamped("ort:cpu", 1.0, 10_000_000, 1_000_000)
    reading = case_reading(c)
    assert reading.bound == "compute" and reading.intensity == 10.0
    assert reading.of_roof == pytest.approx(1e7 / (c.latency.fastest / 1e3) / 100e9)
    assert case_cells(c, {c.key: c})[ROOF] == f"{reading.of_roof:.0%} (compute)"
    assert case_cells(case("ort:cpu", 1.0), {})[ROOF] == "-"  # runs from before the roofline


def test_the_report_draws_a_roofline_and_recommend_says_the_distance(tmp_path):
    cases = [
        _stamped("ort:cpu", 1.0, 2_000_000, 1_000_000),
        _stamped("torch:cpu", 3.0, 2_000_000, 1_000_000),
    ]
    save(run(*cases, run_id="roof"), tmp_path / "run")
    markdown = write_report([tmp_path / "run"], tmp_path / "rep").read_text()
    plot = tmp_path / "rep" / "plots" / "roofline_cpu.png"
    assert plot.read_bytes().startswith(PNG)
    assert "(plots/roofline_cpu.png)" in markdown and ROOF in markdown
    shipped = recommend(cases)[0]
    reading = case_reading(shipped.best.case)
    assert reading.bound == "memory"  # 2 FLOP/B, under the ridge at 10
    assert f"{reading.of_roof:.0%} of its memory roof at 2.0 FLOP/B" in shipped.line()
    assert shipped.to_dict()["best"]["roofline"]["bound"] == "memory"


def test_a_report_without_stamps_draws_no_roofline(tmp_path):
    save(run(case("ort:cpu", 1.0), case("torch:cpu", 2.0), run_id="old"), tmp_path / "run")
    markdown = write_report([tmp_path / "run"], tmp_path / "rep").read_text()
    assert "plots/roofline_" not in markdown


def test_recommend_and_the_report_leave_int8_out_unless_it_is_named(tmp_path):
    fp32 = case("ort:cpu", 2.0)
    int8 = replace(case("ort:cpu", 1.0, precision="int8-u8"), run=None)
    (shipped,) = recommend([fp32, int8])
    assert shipped.best.case.key.precision == "fp32"
    (named,) = recommend([fp32, int8], ["int8-u8"])
    assert named.best.case.key.precision == "int8-u8"
    save(run(fp32, int8, run_id="int8"), tmp_path / "run")
    markdown = write_report([tmp_path / "run"], tmp_path / "rep").read_text()
    ship = markdown.split("## Which format to ship")[1].split("##")[0]
    assert "ort:cpu kept fp32" in ship and "int8-u8" not in ship
