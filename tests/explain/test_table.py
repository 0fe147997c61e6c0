"""Rows from events: every event charged to exactly one row, fused units never split, kept and
merged columns meeting through the merge's correspondence."""

import pytest

from ccnbench.explain.cases import median_events
from ccnbench.explain.records import ADDED, OUTSIDE, FormatProfile, LayerEvent, Overhead
from ccnbench.explain.table import collapse, layer_table


def _profile(events, target="ort:cpu", layout="kept"):
    return FormatProfile("m", layout, target, "fp32", 1, 1, Overhead(100.0, 150.0, 2), tuple(events), 3)


def _cells_add_up(table, profiles):
    for i, p in enumerate(profiles):
        assert sum(r.us(i) for r in table.rows) == pytest.approx(p.profiled_us)
        assert sum(r.cells[i].units for r in table.rows if r.cells[i]) == len(p.events)


def test_every_event_is_in_exactly_one_row_and_fused_units_join_rows_in_every_column():
    ort = _profile([
        LayerEvent("conv", "Conv", "Conv (CPU)", 10, ("b.conv",)),
        LayerEvent("bn", "BatchNormalization", "x", 3, ("b.norm",)),
        LayerEvent("act", "LeakyRelu", "x", 2, ("b.act",)),
        LayerEvent(OUTSIDE, "", "", 5),
    ])  # fmt: skip
    openvino = _profile([
        LayerEvent("c", "Convolution", "brgconv", 8, ("b.conv",)),
        LayerEvent("m", "MulAdd", "jit", 4, ("b.norm", "b.act")),
        LayerEvent("r", "Reorder", "jit_uni", 1, (), added=True),
        LayerEvent("unmapped", "Const", "", 0.5),
        LayerEvent(OUTSIDE, "", "", 2),
    ], target="openvino:cpu")  # fmt: skip
    table = layer_table([ort, openvino], "t")
    _cells_add_up(table, [ort, openvino])
    labels = [r.label for r in table.rows]
    assert labels == ["b.conv", "b.{norm,act}", ADDED + "Reorder", OUTSIDE]
    fused = table.rows[1]
    assert fused.us(0) == 5 and fused.us(1) == 4 and fused.cells[1].fused and not fused.cells[0].fused
    assert table.rows[2].cells[0] is None  # ONNX Runtime added no Reorder
    assert table.rows[3].us(1) == 2.5  # an event of no module is outside the layers


def test_kept_and_merged_meet_through_the_renamer_and_sort_by_the_difference():
    kept = _profile([
        LayerEvent("c0", "Conv", "k", 10, ("extractors.0.0.conv",)),
        LayerEvent("c1", "Conv", "k", 10, ("extractors.1.0.conv",)),
        LayerEvent("fc", "Gemm", "k", 1, ("classifier",)),
        LayerEvent(OUTSIDE, "", "", 4),
    ])  # fmt: skip
    merged = _profile([
        LayerEvent("c", "Conv", "k", 12, ("extractor.0.conv",)),
        LayerEvent("fc", "Gemm", "k", 1, ("head",)),
        LayerEvent(OUTSIDE, "", "", 1),
    ], layout="merged")  # fmt: skip
    to_merged = {"extractors.0.0.conv": "extractor.0.conv", "extractors.1.0.conv": "extractor.0.conv",
                 "classifier": "head"}  # fmt: skip
    table = layer_table(
        [kept, merged], "t", [to_merged.get, lambda p: p], compare=True, displays=[lambda p: p, lambda p: p]
    )
    _cells_add_up(table, [kept, merged])
    assert [r.label for r in table.rows] == [
        "extractors.{0,1}.0.conv → extractor.0.conv",
        OUTSIDE,
        "classifier → head",
    ]
    assert table.rows[0].us(0) == 20 and table.rows[0].us(1) == 12


def test_median_events_sums_a_unit_run_twice_in_one_call_and_counts_a_missing_one_as_zero():
    calls = [
        [LayerEvent("x", "", "", 1, ("a",)), LayerEvent("x", "", "", 2, ("a",)), LayerEvent("y", "", "", 5)],
        [LayerEvent("x", "", "", 4, ("a",))],
        [LayerEvent("x", "", "", 3, ("a",)), LayerEvent("y", "", "", 7)],
    ]
    assert {e.name: e.us for e in median_events(calls)} == {"x": 3, "y": 5}


def test_collapse_names_the_branches_once():
    assert collapse(["a.2.conv", "a.0.conv", "a.10.conv"]) == "a.{0,2,10}.conv"
    assert collapse(["a.0.norm", "b.1.act"]) == "a.0.norm + b.1.act"
    assert collapse(["x.norm", "x.act"], in_order=True) == "x.{norm,act}"
