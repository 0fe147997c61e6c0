"""An int8 case end to end: graded on the evaluation set, with what the runtime ran in int8."""

import pytest

from ccnbench.backends import Target
from ccnbench.measure import int8_grading
from ccnbench.models import spec_from_preset
from ccnbench.run import check, plan
from ccnbench.source import ModelSource


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    spec = spec_from_preset("tiny", "model", branches=2)
    sources = [ModelSource.from_spec(spec, "merged")]
    targets = [Target.parse(t) for t in ("ort:cpu", "openvino:cpu", "torch:cpu")]
    groups = plan.case_groups(sources, targets, ["int8-u8"], [1, 2], tmp_path_factory.mktemp("a"), threads=1)
    return list(check.run(groups))


def test_int8_cases_are_graded_on_the_evaluation_set(cases):
    ran = [c for c in cases if c.status == "ok"]
    assert {c.key.target for c in ran} == {"ort:cpu", "openvino:cpu"}
    for c in ran:
        (out,) = c.agreement.outputs
        assert out.graded_by == "agreement" and out.samples == int8_grading.EVAL_SAMPLES
        assert c.key.quantization.endswith("u8asym/n32/seed0")


def test_int8_cases_record_what_ran_in_int8(cases):
    for c in (c for c in cases if c.status == "ok"):
        assert c.details["int8_ran"] and c.details["int8_layers"]
    ov = next(c for c in cases if c.key.target == "openvino:cpu")
    assert ov.details["int8_kernels"] and any(x.startswith("Convolution") for x in ov.details["int8_layers"])
    assert ov.details["inference_precision"] == "fp32"  # the hint pins the non-quantized layers


def test_torch_int8_is_unavailable_with_the_reason(cases):
    torch_cases = [c for c in cases if c.key.target == "torch:cpu"]
    assert torch_cases and all(c.status == "unavailable" and "QDQ" in c.message for c in torch_cases)
