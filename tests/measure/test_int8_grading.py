"""int8 grading: agreement measures on an evaluation set, keys that tell int8 recipes apart,
contests that pair int8 with fp32, and torch targets that say why they have no int8."""

import json
import math
from pathlib import Path

import pytest
import torch

from ccnbench.backends import Target
from ccnbench.formats.int8 import Recipe
from ccnbench.measure import int8_grading
from ccnbench.measure.agreement import Agreement, TolerancePolicy, compare, relative_rms
from ccnbench.models import spec_from_preset
from ccnbench.results import CaseKey
from ccnbench.run import contest, plan
from ccnbench.source import ModelSource


def _logits(n=64, classes=4, seed=0):
    return torch.randn(n, classes, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_int8_is_graded_by_agreement_not_elementwise():
    ref = _logits()
    near = ref + 0.01 * _logits(seed=1)  # far outside fp32's 1e-4, well inside int8's noise
    agreement = compare([near], [ref], ["logits"], TolerancePolicy("int8-u8"))
    out = agreement.outputs[0]
    assert agreement.passed and out.graded_by == "agreement" and out.samples == 64
    assert not compare([near], [ref], ["logits"], TolerancePolicy("fp32")).passed


def test_int8_fails_on_top1_cosine_or_relative_error():
    ref = _logits()
    flipped = -ref  # every argmax wrong, cosine -1
    assert not compare([flipped], [ref], ["logits"], TolerancePolicy("int8-s8")).passed
    regression = torch.linspace(-1e-3, 1e-3, 64, dtype=torch.float64).reshape(64, 1)
    off = regression * 1.5  # a regression head near zero, 50 % off: rel_rms 0.5
    result = compare([off], [regression], ["regression"], TolerancePolicy("int8-u8")).outputs[0]
    assert result.top1 is None and math.isclose(result.rel_rms, 0.5) and not result.passed


def test_relative_rms_is_defined_near_zero():
    ref = torch.tensor([0.0, 1e-9, -1e-9], dtype=torch.float64)
    assert relative_rms(ref, ref) == 0.0
    assert math.isclose(relative_rms(torch.zeros(3, dtype=torch.float64), ref), 1.0)
    assert relative_rms(torch.ones(3), torch.zeros(3, dtype=torch.float64)) == math.inf


def test_int8_grades_survive_json():
    ref = _logits()
    agreement = compare([ref * 1.01], [ref], ["logits"], TolerancePolicy("int8-u8"))
    again = Agreement.from_dict(json.loads(json.dumps(agreement.to_dict())))
    assert again == agreement
    fp32 = compare([ref], [ref], ["logits"], TolerancePolicy("fp32")).to_dict()
    assert "graded_by" not in fp32["outputs"][0]  # files of the float precisions read as before


def test_case_key_holds_the_recipe_only_for_int8():
    plain = CaseKey("m", "d", "kept", "ort:cpu", "fp32", 1)
    assert "quantization" not in plain.to_dict()
    key = CaseKey("m", "d", "kept", "ort:cpu", "int8-u8", 1, quantization=Recipe("int8-u8").key)
    assert CaseKey(**json.loads(json.dumps(key.to_dict()))) == key
    other = CaseKey("m", "d", "kept", "ort:cpu", "int8-u8", 1, quantization=Recipe("int8-u8", seed=1).key)
    assert other != key and str(other) != str(key)


@pytest.fixture(scope="module")
def groups(tmp_path_factory):
    spec = spec_from_preset("tiny", "model", branches=2)
    sources = [ModelSource.from_spec(spec, lay) for lay in ("kept", "merged")]
    targets = [Target.parse(t) for t in ("torch:cpu", "ort:cpu", "openvino:cpu")]
    return plan.case_groups(sources, targets, ["fp32", "int8-u8"], [1], tmp_path_factory.mktemp("a"))


def test_torch_has_no_int8_and_says_why(groups):
    torch_int8 = next(g for g in groups if g.target.backend == "torch" and g.precision == "int8-u8")
    assert "QDQ ONNX file" in plan.unavailable_reason(torch_int8)
    ort_int8 = next(g for g in groups if g.target.backend == "ort" and g.precision == "int8-u8")
    assert ort_int8.case_keys()[0].quantization == Recipe("int8-u8").key


def test_int8_shares_its_models_fp32_contest_and_pairs_with_fp32(groups):
    assert len({plan.contest_key(g) for g in groups}) == 1

    class Member:
        def __init__(self, group):
            self.group = group

    members = [Member(g) for g in groups]
    pairs = contest.partners(members)
    for i, m in enumerate(members):
        g = m.group
        if g.precision == "int8-u8" and g.target.backend != "torch":
            fp32 = next(j for j, o in enumerate(members) if o.group.precision == "fp32"
                        and o.group.target == g.target and o.group.source.layout == g.source.layout)  # fmt: skip
            assert (i, fp32) in pairs


def test_evaluation_set_is_seeded_and_computed_once():
    spec = spec_from_preset("tiny", "model", branches=2)
    source = ModelSource.from_spec(spec)
    a = int8_grading.evaluation_set(source, samples=4)
    assert a is int8_grading.evaluation_set(source, samples=4)
    assert a[0][0].shape[0] == 4 and a[1][0].dtype == torch.float64


def test_run_in_batches_covers_every_sample():
    calls = []

    def infer(part):
        calls.append(part[0].shape[0])
        return [part[0] * 2]

    x = torch.arange(10.0).reshape(10, 1)
    (y,) = int8_grading.run_in_batches(infer, (x,), 4)
    assert calls == [4, 4, 2] and torch.equal(y, x * 2)


SPEED_RUN = Path(__file__).resolve().parents[2] / "results" / "int8-evidence" / "speed"


@pytest.mark.skipif(not SPEED_RUN.is_dir(), reason="the committed int8 speed run is not here")
def test_recommend_ranks_int8_only_when_named():
    from typer.testing import CliRunner

    from ccnbench.cli import app

    plain = CliRunner().invoke(app, ["recommend", str(SPEED_RUN), "--json"])
    assert plain.exit_code == 0, plain.output
    shipped = {r["best"]["precision"] for r in json.loads(plain.output) if r.get("best")}
    assert shipped and not any(p.startswith("int8") for p in shipped)
    named = CliRunner().invoke(app, ["recommend", str(SPEED_RUN), "--precision", "int8", "--json"])
    assert named.exit_code == 0, named.output
    assert {r["best"]["precision"] for r in json.loads(named.output) if r.get("best")} <= {
        "int8-u8",
        "int8-s8",
    }
