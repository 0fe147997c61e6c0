"""The pass rule, its edge cases, and the metrics reported beside it."""

import math

import pytest
import torch

from ccnbench.agreement import DEFAULT_TOLERANCES, Agreement, Tolerance, TolerancePolicy, compare
from ccnbench.errors import UsageError


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
