"""Grading a small reference (issue 41): the atol follows the reference's scale below 0.05, an
output constant where the reference varies fails, and a pass no file could have failed is
``vacuous``. Synthetic tensors; the MONAI network itself is in tests/models/test_generic_faults.py."""

import math

import pytest
import torch

from ccnbench.measure.agreement import (
    DEFAULT_TOLERANCES,
    SCALE_FLOOR,
    SMALL_SCALE_ATOL,
    Agreement,
    TolerancePolicy,
    compare,
)
from ccnbench.results import CaseKey, CaseResult


def _logits(scale, batch=2, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, classes, generator=g, dtype=torch.float64) * scale


def _grade(y, ref, precision="fp32", **policy):
    return compare([y], [ref], ["logits"], TolerancePolicy(precision, **policy))


def _verdict(agreement):
    return CaseResult(CaseKey("m", "", "kept", "ort:cpu", "fp32", 2), "ok", agreement=agreement).verdict


@pytest.mark.parametrize(("precision", "wrong", "right"), [("fp32", 1.1, 1 + 1e-6), ("fp16", 1.5, 1 + 1e-2)])
def test_a_tiny_reference_still_fails_a_wrong_file_and_passes_round_off(precision, wrong, right):
    ref = _logits(1e-14)
    # The case: with the absolute atol alone, a 10 % wrong file "agreed" at 1e-14.
    offset = _logits(1e-14, seed=1)  # an error that does not follow the reference element by element
    assert _verdict(_grade(ref * wrong, ref, precision)) == "FAIL"
    assert _verdict(_grade(ref + (wrong - 1) * offset, ref, precision)) == "FAIL"
    assert _verdict(_grade(ref * right, ref, precision)) == "pass"
    applied = _grade(ref, ref, precision).outputs[0].atol
    assert applied == pytest.approx(SMALL_SCALE_ATOL[precision] * float(ref.abs().max()))


def test_the_small_scale_atol_never_loosens_the_default():
    ref = _logits(1.0)
    ref = ref / ref.abs().max() * 0.04  # below the floor, but 1e-1 of R would exceed fp16's 3e-3
    assert _grade(ref, ref, "fp16").outputs[0].atol == DEFAULT_TOLERANCES["fp16"].atol
    assert _grade(ref, ref, "fp32").outputs[0].atol == pytest.approx(1e-5 * 0.04)


def test_a_reference_at_or_above_the_floor_is_graded_as_before():
    ref = _logits(1.0)
    ref = ref / ref.abs().max() * SCALE_FLOOR  # exactly at the floor: atol unchanged
    out = _grade(ref.float(), ref).outputs[0]
    assert out.atol == DEFAULT_TOLERANCES["fp32"].atol and out.passed
    big = _logits(0.5)
    assert _grade(big + 0.9e-4, big).outputs[0].atol == 1e-4  # and 0.9e-4 off still passes


def test_a_tolerance_the_user_gave_is_not_scaled():
    ref = _logits(1e-14)
    assert _grade(ref * 1.1, ref, atol=1e-4).outputs[0].atol == 1e-4
    assert _grade(ref * 1.1, ref, atol=1e-4).passed  # what they asked for


def test_zero_where_the_reference_varies_fails_as_constant_even_below_fp16s_range():
    ref = _logits(1e-14)
    agreement = _grade(torch.zeros(2, 3, dtype=torch.float16), ref, "fp16")
    (out,) = agreement.outputs
    assert out.constant and not out.passed and _verdict(agreement) == "FAIL"
    # Any one value repeated is constant too.
    assert _grade(torch.full((2, 3), 3e-15), ref).outputs[0].constant


def test_a_one_element_output_is_never_called_constant():
    ref = torch.tensor([[0.3]], dtype=torch.float64)
    out = _grade(ref.float(), ref).outputs[0]
    assert not out.constant and out.passed


def test_an_all_zero_reference_is_vacuous_not_pass():
    ref = torch.zeros(2, 3, dtype=torch.float64)
    agreement = _grade(torch.zeros(2, 3), ref)
    assert agreement.passed and "too small" in agreement.vacuous
    case = CaseResult(CaseKey("m", "", "kept", "ort:cpu", "fp32", 2), "ok", agreement=agreement)
    assert case.verdict == "vacuous" and not case.passed
    # A file that disagrees with it is still a FAIL.
    assert _verdict(_grade(torch.ones(2, 3), ref)) == "FAIL"


def test_a_reference_flat_across_samples_is_vacuous_a_single_sample_is_not_judged():
    # Logits that are the classifier's bias: each sample the same, so inputs change nothing.
    bias = torch.tensor([0.2, -0.1, 0.4], dtype=torch.float64)
    ref = bias.repeat(4, 1) + 1e-9 * _logits(1.0, batch=4)
    agreement = _grade(ref.float(), ref)
    assert agreement.passed and "too flat" in agreement.vacuous and _verdict(agreement) == "vacuous"
    one = ref[:1]
    assert _verdict(_grade(one.float(), one)) == "pass"


def test_one_varying_output_is_enough_to_tell():
    flat = torch.tensor([[0.5], [0.5]], dtype=torch.float64)
    varying = _logits(1.0)
    agreement = compare([flat.float(), varying.float()], [flat, varying], ["regression", "logits"],
                        TolerancePolicy("fp32"))  # fmt: skip
    assert agreement.passed and agreement.vacuous == ""


def test_scale_and_vacuous_survive_json_and_older_files_read_as_before():
    ref = torch.zeros(2, 3, dtype=torch.float64)
    agreement = _grade(torch.zeros(2, 3), ref)
    again = Agreement.from_dict(agreement.to_dict())
    assert again.vacuous == agreement.vacuous and again.scale == 0.0
    big = _logits(1.0)
    data = _grade(big.float(), big).to_dict()
    assert "vacuous" not in data and "constant" not in data["outputs"][0]
    del data["scale"]  # a file written before the rule
    old = Agreement.from_dict(data)
    assert old.scale is None and old.vacuous == "" and old.passed


def test_nan_still_fails_before_any_scale_rule():
    ref = _logits(1e-14)
    y = ref.clone()
    y[0, 0] = math.nan
    assert _verdict(_grade(y, ref)) == "FAIL"
