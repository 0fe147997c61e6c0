"""The ``vacuous`` verdict through check, bench and export --model (issue 41): exit code 0 as for
``reference``, never counted as agreeing, and a note that says why and what to do. A factory whose
classifier starts at zero gives an all-zero reference: no file, right or wrong, could fail it."""

import json
import textwrap
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from ccnbench.cli import app
from ccnbench.run import check

from helpers import FIXTURES, case

ZERO_HEAD = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunks = nn.ModuleList(nn.Sequential(nn.Conv3d(1, 2, 3), nn.AdaptiveAvgPool3d(1), nn.Flatten())
                                        for _ in range(2))
            self.head = nn.Linear(4, 3)

        def forward(self, a, b):
            return self.head(torch.cat([t(x) for t, x in zip(self.trunks, (a, b))], dim=1))


    def zero_head():
        torch.manual_seed(0)
        model = Two()
        nn.init.zeros_(model.head.weight)
        nn.init.zeros_(model.head.bias)
        return model.eval()
    """
)


def test_vacuous_cases_exit_zero_are_not_counted_and_say_what_to_do():
    flat = "reference too small: max |reference| 0.0e+00, below the smallest normal number 1.2e-38"
    ok = case("torch:cpu", 1.0)
    empty = replace(case("ort:cpu", 1.0), agreement=replace(ok.agreement, vacuous=flat))
    assert check.exit_code([ok, empty]) == 0
    assert check.summary([ok, empty]) == "1/2 cases agree with the oracle"
    lines = check.problem_lines([ok, empty])
    assert (f"model-n3 (batch 1): vacuous, {flat}", "yellow") in lines
    assert any("load trained weights" in line and style == "yellow" for line, style in lines)


@pytest.fixture
def zero_head(tmp_path):
    path = tmp_path / "zero_head.py"
    path.write_text(ZERO_HEAD)
    return f"{path}:zero_head"


def test_check_grades_an_all_zero_reference_vacuous_and_exits_zero(zero_head, tmp_path):
    args = ["check", "--model", zero_head, "--input-shape", "1x6x6x6", "--branches", "2", "--layout", "kept",
            "--targets", "torch:cpu", "--batch", "1,2", "--artifacts", str(tmp_path / "a")]  # fmt: skip
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    assert (
        "vacuous" in out.output and "0/2 cases agree" in out.output and "load trained weights" in out.output
    )
    data = json.loads(CliRunner().invoke(app, [*args, "--json"]).output)
    assert {c["verdict"] for c in data["cases"]} == {"vacuous"}


@pytest.mark.slow  # an ONNX export and two ONNX Runtime runs
def test_export_model_writes_and_labels_a_vacuous_file(zero_head, tmp_path):
    args = ["export", "--model", zero_head, "--input-shape", "1x6x6x6", "--branches", "2", "--layout", "kept",
            "--out", str(tmp_path / "out")]  # fmt: skip
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    assert "vacuous" in out.output and "load trained weights" in out.output


@pytest.mark.slow  # two 3D EfficientNet-B0s through eager PyTorch in fp32 and fp16, batches 1 and 2
def test_check_on_the_untrained_efficientnet_pair_passes_fp32_and_fails_fp16_underflow(tmp_path):
    pytest.importorskip("monai")
    args = ["check", "--model", f"{FIXTURES / 'library_models.py'}:two_efficientnet_b0", "--input-shape",
            "1x32x32x32", "--layout", "kept", "--targets", "torch:cpu", "--precision", "fp32,fp16",
            "--batch", "1,2", "--artifacts", str(tmp_path), "--json"]  # fmt: skip
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 1
    verdicts = {
        (c["key"]["precision"], c["key"]["batch"]): c["verdict"] for c in json.loads(out.output)["cases"]
    }
    assert verdicts == {("fp32", 1): "pass", ("fp32", 2): "pass", ("fp16", 1): "FAIL", ("fp16", 2): "FAIL"}
    fp16 = [c for c in json.loads(out.output)["cases"] if c["key"]["precision"] == "fp16"]
    assert all(c["agreement"]["outputs"][0]["constant"] for c in fp16)
