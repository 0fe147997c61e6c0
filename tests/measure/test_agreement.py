"""The pass rule, its edge cases, and the metrics reported beside it."""

import math

import pytest
import torch

from ccnbench.errors import UsageError
from ccnbench.measure.agreement import DEFAULT_TOLERANCES, Agreement, Tolerance, TolerancePolicy, compare

from helpers import ROOT


def _ref():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 30, generator=g, dtype=torch.float64)


def _check(y, ref, atol, rtol, name="logits"):
    return compare([y], [ref], [name], TolerancePolicy("fp32", atol, rtol)).outputs[0]


def test_identical_outputs_pass_with_perfect_metrics():
    ref = _ref()
    out = _check(ref.float(), ref, 1e-4, 1e-4)
    assert out.passed and out.top1 == 1.0 and out.cosine == pytest.approx(1.0)
    assert out.max_abs < 1e-6 and out.required_atol == 0.0


def test_error_just_above_tolerance_fails_just_below_passes():
    ref = _ref()
    atol, rtol = 1e-3, 1e-2
    bound = atol + rtol * ref.abs()
    above = _check(ref + bound * 1.001, ref, atol, rtol)
    below = _check(ref + bound * 0.999, ref, atol, rtol)
    assert not above.passed and below.passed
    # The smallest passing atol is reported and is right at the edge.
    assert above.required_atol == pytest.approx(
        1.001 * atol + 0.001 * rtol * ref.abs().max().item(), rel=1e-6
    )
    assert _check(ref + bound * 1.001, ref, above.required_atol * 1.0000001, rtol).passed


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_fails_whatever_the_tolerance(bad):
    ref = _ref()
    y = ref.clone()
    y[2, 7] = bad
    out = _check(y, ref, 1e30, 1e30)
    assert not out.passed and out.nonfinite == 1 and out.required_atol == math.inf


def test_top1_counts_rows_whose_argmax_moved():
    ref = torch.eye(4, 30, dtype=torch.float64)
    y = ref.clone()
    y[0, 5] = 2.0  # row 0's argmax moves
    out = _check(y, ref, 10.0, 0.0)
    assert out.top1 == 0.75 and out.passed


def test_regression_output_has_no_top1_and_per_output_override():
    ref = _ref()[:, :1]
    y = ref + 5e-4
    policy = TolerancePolicy("fp32", per_output={"regression": Tolerance(1e-3, 0.0)})
    agreement = compare([y, y], [ref, ref], ["logits", "regression"], policy)
    logits, regression = agreement.outputs
    assert regression.top1 is None and regression.passed
    assert not logits.passed and not agreement.passed


def test_precision_defaults_and_overrides():
    assert TolerancePolicy("fp16").for_output("logits") == DEFAULT_TOLERANCES["fp16"]
    assert TolerancePolicy("fp16", atol=1.0).for_output("logits") == Tolerance(
        1.0, DEFAULT_TOLERANCES["fp16"].rtol
    )
    assert TolerancePolicy.parse_overrides(["regression=1e-3,2e-3"]) == {"regression": Tolerance(1e-3, 2e-3)}
    for bad in ("regression", "=1", "x=abc"):
        with pytest.raises(UsageError):
            TolerancePolicy.parse_overrides([bad])
    with pytest.raises(UsageError):
        Tolerance(-1.0, 0.0)


def test_round_trip_keeps_non_finite_values_as_valid_json():
    import json

    ref = _ref()
    y = ref.clone()
    y[0, 0] = math.nan
    agreement = compare([y], [ref], ["logits"], TolerancePolicy("fp32"))
    text = json.dumps(agreement.to_dict(), allow_nan=False)
    again = Agreement.from_dict(json.loads(text))
    assert again.outputs[0].required_atol == math.inf and not again.passed
    assert math.isnan(again.outputs[0].cosine)


def test_least_cosine_fails_an_output_inside_the_tolerance():
    ref = _ref()
    y = ref * 1.001 + 1e-3  # within atol/rtol 1e-2, but not in the direction of ref
    y[0] = -y[0]
    loose = Tolerance(1e1, 0.0)
    assert compare([y], [ref], ["logits"], TolerancePolicy("fp32", per_output={"logits": loose})).passed
    strict = Tolerance(1e1, 0.0, min_cosine=0.999)
    out = compare([y], [ref], ["logits"], TolerancePolicy("fp32", per_output={"logits": strict})).outputs[0]
    assert not out.passed and out.min_cosine == 0.999 and out.cosine < 0.999
    with pytest.raises(UsageError):
        Tolerance(1e-3, 1e-3, min_cosine=2.0)


def test_tolerance_from_evidence_separates_or_says_it_cannot():
    from ccnbench.measure.agreement import tolerance_from_evidence

    # Separable: the geometric mean of the worst correct case and the least bug, one digit.
    tol, note = tolerance_from_evidence([(2e-3, 1e-6), (5e-4, 1e-7)], [(5e-3, 1e-7), (1e-1, 1e-2)])
    assert tol == Tolerance(3e-3, 3e-3) and note.startswith("separable")
    # Overlapping on t: the bugs under the tolerance are rejected by cosine where it separates them.
    tol, note = tolerance_from_evidence([(2e-3, 1e-6)], [(1e-3, 1e-4), (1e-1, 1e-2)])
    assert tol.atol == 3e-3 and tol.min_cosine == pytest.approx(1 - 1e-5)
    assert "no tolerance separates" in note and "cosine must also be" in note
    # Neither separates: it says how many bugs still pass.
    tol, note = tolerance_from_evidence([(2e-3, 1e-6)], [(1e-3, 1e-7)])
    assert "cannot tell 1 bug(s)" in note


def test_default_fp16_tolerance_comes_from_the_committed_evidence():
    import json

    path = ROOT / "results" / "fp16-evidence" / "evidence.json"
    summary = json.loads(path.read_text())["summary"]
    for precision in ("fp32", "fp16"):
        s = summary[precision]
        assert s["correct_failing"] == [] and s["bugs_passing"] == [], precision
    rule = summary["fp16"]["rule"]
    assert DEFAULT_TOLERANCES["fp16"] == Tolerance(rule["atol"], rule["rtol"], rule["min_cosine"])
